"""Kernel Inception Distance: unbiased MMD², cubic polynomial kernel, subsets (Bińkowski et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffbench.errors import ConfigError


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (xᵀy / d + 1)³ (Bińkowski et al. 2018, Sec. 3)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² of two equal-size samples (Gretton et al. 2012, Eq. 3), in float64."""
    m = x.shape[0]
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    # off-diagonal means of Kxx and Kyy, full mean of Kxy
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kid(
    *,
    features1: torch.Tensor,
    features2: torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float | None]:
    """KID mean and std over `subsets` random subsets of `subset_size` (Bińkowski et al. 2018).

    The subset size is capped at the smaller sample (torch-fidelity refuses a larger one instead). The
    std is None when it measures nothing: one subset, or subsets that hold every sample on both sides
    (all the same set, so any spread is rounding).
    """
    n1, n2 = features1.shape[0], features2.shape[0]
    if features1.shape[1:] != features2.shape[1:]:
        raise ConfigError(f"KID: feature dimensions differ: {features1.shape[1]} vs {features2.shape[1]}")
    if subsets < 1:
        raise ConfigError(f"KID: subsets must be >= 1, got {subsets}")
    if subset_size < 2:
        raise ConfigError(f"KID: the subset size must be >= 2, got {subset_size}")
    size = min(subset_size, n1, n2)
    if size < 2:
        raise ConfigError(f"KID needs at least 2 samples on each side, got {n1} and {n2}")
    f1, f2 = features1.to(torch.float64), features2.to(torch.float64)
    whole = size == n1 and size == n2  # every subset is the whole sample on both sides
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(1 if whole else subsets):
        i1 = torch.as_tensor(rng.choice(n1, size, replace=False), device=f1.device)
        i2 = torch.as_tensor(rng.choice(n2, size, replace=False), device=f2.device)
        values.append(mmd2_unbiased(f1[i1], f2[i2].to(f1.device)))
    arr = np.asarray(values)
    return float(arr.mean()), (float(arr.std()) if len(values) > 1 else None)


# ---- kid as a registered metric (diffbench.metrics.registry) -------------------------------------------


def _kid_value(states: Sequence[Any], ctx: Any) -> tuple[float, dict[str, Any]]:
    """KID of the union of the blocks' feature rows against the reference features; std over subsets."""
    from diffbench.metrics.accumulators import as_float, merge_rows

    assert ctx.ref is not None and ctx.ref.features is not None
    mean, std = kid(
        features1=torch.as_tensor(merge_rows(list(states))),
        features2=torch.as_tensor(ctx.ref.features),
        subsets=ctx.options["kid_subsets"],
        subset_size=ctx.options["kid_subset_size"],
    )
    return mean, {"std": as_float(std)}


def _kid_options(ctx: Any) -> dict[str, Any]:
    return {"kid": {"subsets": ctx.options["kid_subsets"], "subset_size": ctx.options["kid_subset_size"]}}


def _register() -> None:
    from diffbench.metrics.registry import FEATURE_ROWS, Metric, register_metric

    register_metric(
        Metric(
            "kid",
            "lower",
            ("features", "ref-features"),
            "KID (needs reference features)",
            FEATURE_ROWS,
            _kid_value,
            options=_kid_options,
        )
    )


_register()
