"""Training (score) error of a denoiser: the held-out denoising loss per noise level, weighted as EDM trains.

E_{x0, n} lambda(sigma) |D(x0 + sigma n; sigma) - x0|^2 / dim on held-out images x0 in [-1, 1] (uint8 u as
u / 127.5 - 1), with EDM's loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
(Karras et al. 2022, Sec. 5 and Table 1). By Tweedie/denoising score matching the unweighted excess loss is
sigma^4 |s_theta - grad log p_sigma|^2 / dim on average, so it measures the score error up to the
irreducible denoising loss. The `total` averages the weighted loss over EDM's training distribution of
noise levels, ln sigma ~ N(P_mean = -1.2, P_std = 1.2) (Karras et al. 2022, Table 1), by quadrature over the
levels (trapezoid in ln sigma, normalised over the range covered).

This module calls the denoiser only; it imports nothing from diffbench.sampling.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from diffbench.denoiser import sample_shape
from diffbench.errors import ConfigError

P_MEAN, P_STD = -1.2, 1.2  # EDM Table 1, training noise distribution
SIGMA_DATA_DEFAULT = 0.5  # EDM Table 1 (used when the model does not carry its own)


@dataclass
class ScoreErrorResult:
    """Per level: sigma, the weighted loss (mean, and its standard error over images), the plain MSE per
    dimension; `total` the EDM-weighted loss averaged over ln sigma ~ N(-1.2, 1.2^2); n images, repeats."""

    sigmas: list[float]
    weighted: list[float]
    weighted_se: list[float]
    mse: list[float]
    total: float
    n: int
    repeats: int
    sigma_data: float
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dict(self.__dict__)


def edm_weight(sigma: float, sigma_data: float) -> float:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Karras et al. 2022, Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def default_levels(sigma_min: float, sigma_max: float, n: int = 13) -> list[float]:
    """n noise levels log-spaced over [sigma_min, sigma_max]."""
    return [float(s) for s in np.exp(np.linspace(math.log(sigma_min), math.log(sigma_max), n))]


def score_error(
    denoiser: Any,
    images: Iterable[torch.Tensor],
    *,
    sigmas: Sequence[float],
    repeats: int = 1,
    seed: int = 0,
    sigma_data: float | None = None,
    device: str | torch.device = "cpu",
    source: str = "",
) -> ScoreErrorResult:
    """The held-out denoising loss of `denoiser` at each sigma (module docstring).

    images: batches of uint8 NCHW [B, C, H, W] of the model's shape; sigmas: noise levels > 0; repeats: noise
    draws per image and level (torch generator seeded with `seed`, one draw order: batch, repeat, level).
    Raises ConfigError for images of another shape than the model samples, no images, or bad levels.
    """
    if not sigmas or not all(math.isfinite(s) and s > 0 for s in sigmas):
        raise ConfigError("score-error needs noise levels that are finite numbers > 0")
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    shape = tuple(sample_shape(denoiser))
    sd = float(sigma_data if sigma_data is not None else getattr(denoiser, "sigma_data", SIGMA_DATA_DEFAULT))
    gen = torch.Generator().manual_seed(seed)
    sums = np.zeros((len(sigmas), 2))  # weighted: sum and sum of squares, per image
    mse = np.zeros(len(sigmas))
    n = 0
    if isinstance(denoiser, torch.nn.Module):
        denoiser = denoiser.to(device).eval()
    for batch in images:
        if tuple(batch.shape[1:]) != shape:
            raise ConfigError(
                f"images of shape {tuple(batch.shape[1:])} (C, H, W) do not fit the model, which takes {shape}"
            )
        x0 = batch.to(torch.float32) / 127.5 - 1  # the inverse of uint8 = x * 127.5 + 128 at bin centres
        b = x0.shape[0]
        acc_w = torch.zeros(len(sigmas), b, dtype=torch.float64)
        acc_m = torch.zeros(len(sigmas), b, dtype=torch.float64)
        for _ in range(repeats):
            for k, s in enumerate(sigmas):
                noise = torch.randn(x0.shape, generator=gen)
                with torch.no_grad():
                    d = denoiser((x0 + s * noise).to(device), torch.full((b,), float(s), device=device))
                per = ((d.float().cpu() - x0) ** 2).reshape(b, -1).mean(dim=1).to(torch.float64)
                acc_m[k] += per
                acc_w[k] += edm_weight(float(s), sd) * per
        acc_w, acc_m = acc_w / repeats, acc_m / repeats
        sums[:, 0] += acc_w.sum(dim=1).numpy()
        sums[:, 1] += (acc_w**2).sum(dim=1).numpy()
        mse += acc_m.sum(dim=1).numpy()
        n += b
    if n == 0:
        raise ConfigError("score-error got no images")
    mean = sums[:, 0] / n
    var = np.maximum(sums[:, 1] / n - mean**2, 0.0) * n / max(n - 1, 1)
    se = np.sqrt(var / n)
    return ScoreErrorResult(
        sigmas=[float(s) for s in sigmas],
        weighted=[float(v) for v in mean],
        weighted_se=[float(v) for v in se],
        mse=[float(v) for v in mse / n],
        total=training_average(sigmas, [float(v) for v in mean]),
        n=n,
        repeats=repeats,
        sigma_data=sd,
        source=source,
    )


def training_average(sigmas: Sequence[float], values: Sequence[float]) -> float:
    """Average of values(sigma) under ln sigma ~ N(P_mean, P_std^2) (EDM Table 1), trapezoid in ln sigma over
    the levels given, normalised by the density's mass there; a single level returns its value."""
    if len(sigmas) == 1:
        return float(values[0])
    order = np.argsort(sigmas)
    t = np.log(np.asarray(sigmas, dtype=np.float64)[order])
    v = np.asarray(values, dtype=np.float64)[order]
    p = np.exp(-0.5 * ((t - P_MEAN) / P_STD) ** 2)
    return float(np.trapezoid(p * v, t) / np.trapezoid(p, t))
