"""Training (score) error of a denoiser: the held-out denoising loss per noise level, weighted as EDM trains.

E_{x0, n} lambda(sigma) |D(x0 + sigma n; sigma) - x0|^2 / dim on held-out images x0 in [-1, 1] (uint8 u as
u / 127.5 - 1), with EDM's loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
(Karras et al. 2022, Sec. 5 and Table 1). By Tweedie/denoising score matching the unweighted excess loss is
sigma^4 |s_theta - grad log p_sigma|^2 / dim on average, so it measures the score error up to the
irreducible denoising loss. The `total` is the expectation of the weighted loss under EDM's training
distribution of noise levels, ln sigma ~ N(P_mean = -1.2, P_std = 1.2) (Karras et al. 2022, Sec. 5 and
Table 1), by Gauss-Hermite quadrature in ln sigma (probabilists' Hermite, QUAD_NODES = 12 nodes z_i with
weights w_i / sum w: ln sigma_i = P_mean + P_std z_i, sigma from 4e-4 to 220; exact for polynomials of degree
23 in ln sigma). The nodes are evaluated on their own noise draws (a second generator of the seed), apart from
the display levels, so the total does not depend on which or how many levels the table shows.

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
QUAD_NODES = 12  # Gauss-Hermite nodes of the total (relative error 2e-7 on E[sigma^-2], the heaviest term)
SIGMA_DATA_DEFAULT = 0.5  # EDM Table 1 (used when the model does not carry its own)


@dataclass
class ScoreErrorResult:
    """Per level: sigma, the weighted loss (mean, and its standard error over images), the plain MSE per
    dimension; `total` the EDM-weighted loss averaged over ln sigma ~ N(-1.2, 1.2^2) (Gauss-Hermite, module
    docstring) and `total_se` its standard error over images; n images, repeats. extra["quadrature"]: the
    nodes' sigmas, weights and weighted losses."""

    sigmas: list[float]
    weighted: list[float]
    weighted_se: list[float]
    mse: list[float]
    total: float
    n: int
    repeats: int
    sigma_data: float
    source: str = ""
    total_se: float = 0.0
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


def training_nodes(n: int = QUAD_NODES) -> tuple[list[float], list[float]]:
    """(sigmas, weights summing to 1) of n-point Gauss-Hermite quadrature for E f(sigma) under
    ln sigma ~ N(P_mean, P_std^2) (EDM Table 1): ln sigma_i = P_mean + P_std z_i, z_i the nodes of
    numpy.polynomial.hermite_e.hermegauss (weight exp(-z^2 / 2))."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return [float(v) for v in np.exp(P_MEAN + P_STD * z)], [float(v) for v in w / w.sum()]


def _quad_generator(seed: int) -> torch.Generator:
    """The noise of the quadrature nodes: a stream apart from the display levels' (seeded from `seed`)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + 0x5EED_C0DE) & 0x7FFFFFFFFFFFFFFF)


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
    qgen = _quad_generator(seed)
    q_sig, q_w = training_nodes()
    q_sums = np.zeros(2)  # the total per image: sum and sum of squares
    q_node = np.zeros(len(q_sig))
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
        acc_q = torch.zeros(len(q_sig), b, dtype=torch.float64)
        for _ in range(repeats):
            for k, s in enumerate(q_sig):
                noise = torch.randn(x0.shape, generator=qgen)
                with torch.no_grad():
                    d = denoiser((x0 + s * noise).to(device), torch.full((b,), float(s), device=device))
                per = ((d.float().cpu() - x0) ** 2).reshape(b, -1).mean(dim=1).to(torch.float64)
                acc_q[k] += edm_weight(float(s), sd) * per
        acc_q /= repeats
        tot = (torch.tensor(q_w, dtype=torch.float64)[:, None] * acc_q).sum(dim=0)  # per image
        q_sums += [float(tot.sum()), float((tot**2).sum())]
        q_node += acc_q.sum(dim=1).numpy()
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
    total = q_sums[0] / n
    total_se = math.sqrt(max(q_sums[1] / n - total**2, 0.0) * n / max(n - 1, 1) / n)
    return ScoreErrorResult(
        sigmas=[float(s) for s in sigmas],
        weighted=[float(v) for v in mean],
        weighted_se=[float(v) for v in se],
        mse=[float(v) for v in mse / n],
        total=float(total),
        n=n,
        repeats=repeats,
        sigma_data=sd,
        source=source,
        total_se=total_se,
        extra={"quadrature": {"sigmas": q_sig, "weights": q_w, "weighted": [float(v) for v in q_node / n]}},
    )


def training_average(sigmas: Sequence[float], values: Sequence[float]) -> float:
    """Average of values(sigma) under ln sigma ~ N(P_mean, P_std^2) (EDM Table 1), trapezoid in ln sigma over
    the levels given, normalised by the density's mass there; a single level returns its value. A rough
    summary of a display grid only: it depends on the grid; ScoreErrorResult.total uses `training_nodes`."""
    if len(sigmas) == 1:
        return float(values[0])
    order = np.argsort(sigmas)
    t = np.log(np.asarray(sigmas, dtype=np.float64)[order])
    v = np.asarray(values, dtype=np.float64)[order]
    p = np.exp(-0.5 * ((t - P_MEAN) / P_STD) ** 2)
    return float(np.trapezoid(p * v, t) / np.trapezoid(p, t))
