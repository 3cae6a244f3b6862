"""Fréchet distance between two Gaussians (Dowson & Landau 1982; FID of Heusel et al. 2017)."""

from __future__ import annotations

import numpy as np

from diffbench.errors import ConfigError


def _check(mu: np.ndarray, sigma: np.ndarray, name: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ConfigError(f"{name}: mean {list(mu.shape)} and covariance {list(sigma.shape)} do not match")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ConfigError(f"{name}: statistics contain NaN or Inf")


def sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix by eigen-decomposition, negative eigenvalues clipped to 0."""
    s = 0.5 * (sigma + sigma.T)
    lam, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(lam, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ1Σ2)^½ = Σ sqrt(λ_i) of Σ1^½ Σ2 Σ1^½, λ < 0 clipped (REFERENCE §5)."""
    r = sqrt_psd(sigma1)
    m = r @ sigma2 @ r
    lam = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum())


def frechet_distance(*, mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FD = ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1Σ2)^½ (Dowson & Landau 1982; REFERENCE §5), in float64."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    _check(mu1, sigma1, "first statistics")
    _check(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise ConfigError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))
    return max(fd, 0.0)
