"""Fréchet distance between two Gaussians (Dowson & Landau 1982; FID of Heusel et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def psd_factor(sigma: np.ndarray) -> np.ndarray:
    """F [d, d] with F Fᵀ = Σ: the Cholesky factor, or V sqrt(λ₊) by eigen-decomposition when Σ is singular."""
    s = 0.5 * (sigma + sigma.T)
    try:
        return np.linalg.cholesky(s)
    except np.linalg.LinAlgError:  # not positive definite (fewer samples than dimensions): clip λ < 0 to 0
        lam, v = np.linalg.eigh(s)
        return v * np.sqrt(np.clip(lam, 0.0, None))


def _trace_sqrt(factor: np.ndarray, sigma: np.ndarray) -> float:
    """tr (Σ Σ_F)^½ for Σ_F = F Fᵀ: Σ sqrt(λ_i) of the symmetric PSD Fᵀ Σ F, λ < 0 clipped.

    Σ F Fᵀ and Fᵀ Σ F share their eigenvalues (AB and BA do), so one symmetric eigenvalue solve of the
    pair replaces a matrix square root (REFERENCE §5).
    """
    m = factor.T @ sigma @ factor
    lam = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum())


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ1Σ2)^½ = Σ sqrt(λ_i) of Fᵀ Σ1 F with F Fᵀ = Σ2, λ < 0 clipped (REFERENCE §5)."""
    return _trace_sqrt(psd_factor(sigma2), sigma1)


class FrechetReference:
    """One side (μ, Σ) of many Fréchet distances, factored once (Σ = F Fᵀ, see psd_factor).

    Each distance() then costs one d×d symmetric eigenvalue solve: FID over B seed blocks against one
    reference decomposes the reference once, not B times.
    """

    def __init__(self, mu: np.ndarray, sigma: np.ndarray, *, name: str = "second statistics"):
        self.mu = np.asarray(mu, dtype=np.float64)
        self.sigma = np.asarray(sigma, dtype=np.float64)
        _check(self.mu, self.sigma, name)
        self.factor = psd_factor(self.sigma)
        self.trace = float(np.trace(self.sigma))

    def distance(self, mu: np.ndarray, sigma: np.ndarray, *, name: str = "first statistics") -> float:
        """FD = ‖μ − μ_ref‖² + tr Σ + tr Σ_ref − 2 tr (Σ Σ_ref)^½ (Dowson & Landau 1982; REFERENCE §5)."""
        mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
        _check(mu, sigma, name)
        if mu.shape != self.mu.shape:
            raise ConfigError(f"feature dimensions differ: {mu.shape[0]} vs {self.mu.shape[0]}")
        diff = mu - self.mu
        fd = float(diff @ diff + np.trace(sigma) + self.trace - 2.0 * _trace_sqrt(self.factor, sigma))
        return max(fd, 0.0)


def frechet_distance(*, mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FD = ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1Σ2)^½ (Dowson & Landau 1982; REFERENCE §5), in float64.

    Σ2 is factored (Cholesky when positive definite), then one symmetric eigenvalue solve gives the
    trace term; against one reference many times, use FrechetReference(mu2, sigma2).distance.
    """
    mu1, sigma1 = np.asarray(mu1, dtype=np.float64), np.asarray(sigma1, dtype=np.float64)
    _check(mu1, sigma1, "first statistics")
    return FrechetReference(mu2, sigma2).distance(mu1, sigma1)


# ---- fid and fd as registered metrics (diffbench.metrics.registry) -------------------------------------


def _moments_fd(states: Sequence[Any], ctx: Any) -> tuple[float, dict[str, Any]]:
    """FD of the union of the blocks' feature moments to the reference, factored once per reference."""
    from diffbench.metrics.accumulators import merge_moments

    ref = ctx.ref
    assert ref is not None
    key = ("frechet-reference", id(ref))
    if key not in ctx.memo:
        ctx.memo[key] = FrechetReference(ref.mu, ref.sigma)
    fixed = states[0].fixed if len(states) == 1 else None  # a statistics file given as the samples
    mu, sigma = fixed if fixed is not None else merge_moments(list(states)).numpy()
    return ctx.memo[key].distance(mu, sigma), {"extractor": ctx.extractor_id}


def _register() -> None:
    from diffbench.metrics.registry import FEATURE_MOMENTS, Metric, register_metric

    register_metric(
        Metric(
            "fid",
            "lower",
            ("features", "ref-moments"),
            "FID: Fréchet distance in Inception-v3 pool3 space (needs --ref)",
            FEATURE_MOMENTS,
            _moments_fd,
            space="inception",
            infinite_n=True,
        )
    )
    register_metric(
        Metric(
            "fd",
            "lower",
            ("features", "ref-moments"),
            "Fréchet distance in the --extractor feature space (needs --ref)",
            FEATURE_MOMENTS,
            _moments_fd,
            space="named",
            infinite_n=True,
        )
    )


_register()
