"""Exact distribution metrics for analytic models: Fréchet distance to exact moments, sliced Wasserstein."""

from __future__ import annotations

from collections.abc import Sequence
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


# ---- fd-exact and sw as registered metrics (diffbench.metrics.registry) --------------------------------

SW_PROJECTIONS = 256  # random directions of the sliced Wasserstein metric `sw`


def _exact_fd_value(states: Sequence[Any], ctx: Any) -> tuple[float, dict[str, Any]]:
    """FD of the union of the blocks' sample moments to the model's exact mean and covariance."""
    from diffbench.metrics.accumulators import merge_moments

    mu, sigma = merge_moments(list(states)).numpy()
    key = ("exact-moments", id(ctx.model))
    if key not in ctx.memo:
        ctx.memo[key] = (ctx.model.mean().double().cpu().numpy(), ctx.model.covariance().double().cpu().numpy())
    mu2, sigma2 = ctx.memo[key]
    return frechet_distance(mu1=mu, sigma1=sigma, mu2=mu2, sigma2=sigma2), {}


def _check_exact_fd(ctx: Any) -> None:
    from diffbench.metrics.stats import check_enough

    if not ctx.allow_small_n:
        d = int(ctx.model.mean().numel())
        loo = " in each leave-one-block-out set" if ctx.loo_n != ctx.n_all else ""
        check_enough(ctx.loo_n, d, what="fd-exact: samples" + loo)


def _sw_value(states: Sequence[Any], ctx: Any) -> tuple[float, dict[str, Any]]:
    """Sliced W2 of the union of the blocks' samples to as many fresh exact samples of the model."""
    from diffbench.metrics.accumulators import merge_rows

    model = ctx.model.cpu() if isinstance(ctx.model, torch.nn.Module) else ctx.model
    x = torch.from_numpy(merge_rows(list(states)))
    return exact_sliced_wasserstein(model, x, projections=SW_PROJECTIONS), {}


def _add_images(acc: Any, batch: Any) -> None:
    acc.add(batch.images)


def _register() -> None:
    from diffbench.metrics.accumulators import MomentsAcc, RowsAcc
    from diffbench.metrics.registry import Metric, State, register_metric

    sample_moments = State("data", lambda ctx: MomentsAcc(ctx.sample_dim), _add_images)
    sample_rows = State("samples", lambda ctx: RowsAcc(np.dtype(np.float64)), _add_images)
    register_metric(
        Metric(
            "fd-exact",
            "lower",
            ("exact",),
            "analytic models: Fréchet distance to the exact mean and covariance",
            sample_moments,
            _exact_fd_value,
            check=_check_exact_fd,
            infinite_n=True,
        )
    )
    register_metric(
        Metric(
            "sw",
            "lower",
            ("exact",),
            "analytic models: sliced Wasserstein-2 to fresh exact samples",
            sample_rows,
            _sw_value,
            options=lambda ctx: {"sw_projections": SW_PROJECTIONS},
        )
    )


_register()
