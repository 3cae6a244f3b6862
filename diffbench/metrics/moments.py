"""Streaming float64 first and second moments of features, mergeable across batches and processes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffbench.errors import ConfigError


@dataclass(frozen=True)
class Moments:
    """Count, mean and centred outer-product sum M2 = Σ (f − μ)(f − μ)ᵀ, float64 (Chan et al. 1979)."""

    n: int
    mean: torch.Tensor  # [D] float64
    m2: torch.Tensor  # [D, D] float64

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.mean.shape[0])

    def covariance(self) -> torch.Tensor:
        """Unbiased covariance Σ = M2 / (n − 1) (REFERENCE §5)."""
        if self.n < 2:
            raise ConfigError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        return self.m2 / (self.n - 1)

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(μ, Σ) as float64 numpy arrays."""
        return self.mean.cpu().numpy(), self.covariance().cpu().numpy()


def empty_moments(dim: int, *, device: torch.device | str = "cpu") -> Moments:
    """Moments of zero vectors of dimension `dim`."""
    return Moments(
        n=0,
        mean=torch.zeros(dim, dtype=torch.float64, device=device),
        m2=torch.zeros(dim, dim, dtype=torch.float64, device=device),
    )


def moments_of(features: torch.Tensor) -> Moments:
    """Moments of one batch [B, D], computed in float64."""
    if features.ndim != 2:
        raise ConfigError(f"features must be [N, D], got shape {list(features.shape)}")
    f = features.to(torch.float64)
    n = f.shape[0]
    if n == 0:
        return empty_moments(f.shape[1], device=f.device)
    mean = f.mean(dim=0)
    c = f - mean
    return Moments(n=n, mean=mean, m2=c.T @ c)


def merge(a: Moments, b: Moments) -> Moments:
    """Combine two sets of moments (Chan, Golub & LeVeque 1979, pairwise update)."""
    if a.dim != b.dim:
        raise ConfigError(f"cannot merge moments of dimension {a.dim} and {b.dim}")
    if b.n == 0:
        return a
    if a.n == 0:
        return b
    n = a.n + b.n
    mb = b.mean.to(a.mean.device)
    delta = mb - a.mean
    # Chan et al.: μ = μa + δ nb/n; M2 = M2a + M2b + δδᵀ na nb / n
    mean = a.mean + delta * (b.n / n)
    m2 = a.m2 + b.m2.to(a.m2.device) + torch.outer(delta, delta) * (a.n * b.n / n)
    return Moments(n=n, mean=mean, m2=m2)


def update(acc: Moments, features: torch.Tensor) -> Moments:
    """Fold one batch of features into running moments."""
    return merge(acc, moments_of(features.to(acc.mean.device)))


def from_sums(*, n: int, total: np.ndarray, outer: np.ndarray) -> Moments:
    """Moments from raw sums Σf and Σffᵀ (as some tools store them): M2 = Σffᵀ − n μμᵀ (REFERENCE §5)."""
    mean = torch.as_tensor(np.asarray(total, dtype=np.float64) / n)
    m2 = torch.as_tensor(np.asarray(outer, dtype=np.float64)) - n * torch.outer(mean, mean)
    return Moments(n=n, mean=mean, m2=m2)


def to_arrays(m: Moments) -> dict[str, np.ndarray]:
    """Plain arrays (n, mean, m2) for sending between processes or storing."""
    return {"n": np.asarray(m.n, dtype=np.int64), "mean": m.mean.cpu().numpy(), "m2": m.m2.cpu().numpy()}


def from_arrays(d: dict[str, np.ndarray], *, device: torch.device | str = "cpu") -> Moments:
    """Inverse of to_arrays."""
    return Moments(
        n=int(d["n"]),
        mean=torch.as_tensor(np.asarray(d["mean"], dtype=np.float64), device=device),
        m2=torch.as_tensor(np.asarray(d["m2"], dtype=np.float64), device=device),
    )
