"""Restart sampling (Xu et al. 2023): Heun on the main grid, with K forward-noise jumps back up an interval."""

from __future__ import annotations

import math
from typing import Any

import torch

from diffbench.errors import ConfigError
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.schedules import edm_grid
from diffbench.sampling.solvers import Callback, StepInfo, solver
from diffbench.sampling.solvers.edm import heun

RESTART_DEFAULTS = {"restart_min": 0.06, "restart_max": 0.30, "restart_k": 2, "restart_steps": 3}


def restart_nfe(options: dict[str, Any]) -> int:
    """Each of the K restarts runs `restart_steps` Heun steps between two positive sigmas: 2 NFE each."""
    k = options.get("restart_k", RESTART_DEFAULTS["restart_k"])
    n = options.get("restart_steps", RESTART_DEFAULTS["restart_steps"])
    return 2 * int(k) * int(n)


@solver(
    "restart",
    order=2,
    stochastic=True,
    paper="Xu et al. 2023, Restart Sampling (NeurIPS), Alg. 1, with EDM's Heun as the inner ODE solver",
    evals_per_step=2,
    evals_final=1,
    min_steps=2,
    extra_nfe=restart_nfe,
    options=("restart_min", "restart_max", "restart_k", "restart_steps", "S_noise"),
)
def restart(
    denoiser: Any,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    restart_min: float = 0.06,
    restart_max: float = 0.30,
    restart_k: int = 2,
    restart_steps: int = 3,
    S_noise: float = 1.0,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Heun down the grid; at the grid point nearest restart_min, K times: add noise up to restart_max
    (x += sqrt(smax^2 - smin^2) eps, Xu et al. 2023, Eq. 4) and solve back down with `restart_steps` Heun steps."""
    if restart_k < 0 or restart_steps < 1:
        raise ConfigError("restart needs restart_k >= 0 and restart_steps >= 1")
    positive = [float(s) for s in sigmas if s > 0]
    j = min(range(1, len(positive)), key=lambda k: abs(positive[k] - restart_min)) if len(positive) > 1 else 0
    s_lo = positive[j]
    if not s_lo < restart_max <= positive[0]:
        raise ConfigError(
            f"restart_max {restart_max} must lie between the restart point {s_lo:.4g} and sigma_max {positive[0]:.4g}"
        )
    n = len(sigmas) - 1
    x = heun(denoiser, x, sigmas[: j + 1], noise=None, callback=callback)
    inner = edm_grid(restart_steps + 1, s_lo, restart_max)
    inner[-1] = s_lo  # land exactly on the main grid's sigma
    for k in range(restart_k):
        if noise is None:
            raise ConfigError("restart needs a noise source")
        # restart noise comes from the per-seed stream after the main steps' draws (indices n, n+1, ...)
        x = x + math.sqrt(restart_max**2 - s_lo**2) * S_noise * noise.step(n + k, x)
        x = heun(denoiser, x, inner, noise=None)

    def shifted(info: StepInfo) -> None:
        if callback is not None:
            callback(StepInfo(info.i + j, n, info.sigma, info.sigma_next, info.x, info.denoised))

    return heun(denoiser, x, sigmas[j:], noise=None, callback=shifted)
