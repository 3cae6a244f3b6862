"""Exact distribution metrics for analytic models: Fréchet distance to exact moments, sliced Wasserstein."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from diffbench.errors import ConfigError
from diffbench.metrics.frechet import frechet_distance
from diffbench.metrics.moments import moments_of


def _flat(samples: torch.Tensor) -> torch.Tensor:
    if samples.ndim < 2:
        raise ConfigError(f"samples must be [N, ...], got shape {list(samples.shape)}")
    return samples.detach().to(torch.float64).cpu().flatten(1)


def exact_frechet(model: Any, samples: torch.Tensor, *, allow_small_n: bool = False) -> float:
    """Fréchet distance (Dowson & Landau 1982) of samples' moments to the model's exact mean, covariance."""
    if not (callable(getattr(model, "mean", None)) and callable(getattr(model, "covariance", None))):
        raise ConfigError(f"{type(model).__name__} has no exact moments (mean(), covariance())")
    x = _flat(samples)
    n, d = x.shape
    if d != int(model.mean().numel()):
        raise ConfigError(f"samples have {d} values each, the model {int(model.mean().numel())}")
    if n < d + 1 and not allow_small_n:
        raise ConfigError(
            f"{n} samples give a rank-deficient {d}x{d} covariance; the exact Fréchet distance needs at least {d + 1}"
        )
    mu, sigma = moments_of(x).numpy()
    return frechet_distance(
        mu1=mu,
        sigma1=sigma,
        mu2=model.mean().double().cpu().numpy(),
        sigma2=model.covariance().double().cpu().numpy(),
    )


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, *, projections: int = 256, seed: int = 0) -> float:
    """SW₂ over random unit directions: sqrt of the mean over θ of W₂²(θᵀx, θᵀy) (Bonneel et al. 2015)."""
    a, b = _flat(x), _flat(y)
    if a.shape != b.shape:
        raise ConfigError(f"sliced Wasserstein needs equal-size samples, got {list(a.shape)} and {list(b.shape)}")
    if projections < 1:
        raise ConfigError(f"projections must be >= 1, got {projections}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    theta /= theta.norm(dim=0, keepdim=True)
    # 1-D W₂ between equal-size empirical measures: match sorted projections
    pa, _ = (a @ theta).sort(dim=0)
    pb, _ = (b @ theta).sort(dim=0)
    return float(((pa - pb) ** 2).mean(dim=0).mean().sqrt())


def exact_sliced_wasserstein(model: Any, samples: torch.Tensor, *, projections: int = 256, seed: int = 0) -> float:
    """Sliced W₂ between samples and as many fresh exact samples of the model (model.sample_data)."""
    if not callable(getattr(model, "sample_data", None)):
        raise ConfigError(f"{type(model).__name__} cannot draw exact samples (sample_data)")
    g = torch.Generator().manual_seed(int(np.uint32(seed + 0x5EED)))
    fresh = model.sample_data(samples.shape[0], g)
    return sliced_wasserstein(samples, fresh, projections=projections, seed=seed)
