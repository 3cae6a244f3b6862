"""Restart sampling (Xu et al. 2023, NeurIPS, arXiv 2306.14878): Heun on the main grid, with K jumps back up.

The parameters follow the paper's [N_Restart, K, t_min, t_max] (its Table 3; restart_n, restart_k,
restart_tmin, restart_tmax here): at the main-grid point nearest t_min, K times, add noise up to t_max
(x += sqrt(t_max^2 - t_min^2) eps, Eq. 4 of the paper) and solve back down on an EDM rho = 7 grid of
N_Restart points from t_max to that point, i.e. N_Restart - 1 Heun steps (2 NFE each). The published
runs also add churn inside the restart interval: each inner step from t first raises sigma to
t (1 + restart_gamma) when S_min <= t <= S_max (restart_gamma 0.05, S_min 0.01, S_max 1, S_noise 1.003
in the paper's commands). restart_gamma defaults to 0 here (deterministic inner steps).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffbench.denoiser import BoundDenoiser
from diffbench.errors import ConfigError
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.schedules import edm_grid
from diffbench.sampling.solvers import Callback, StepInfo, solver
from diffbench.sampling.solvers.edm import heun

# the paper's CIFAR-10 configuration [N_Restart, K, t_min, t_max] = [3, 2, 0.06, 0.30]: 43 NFE at 18 main steps
RESTART_DEFAULTS = {"restart_n": 3, "restart_k": 2, "restart_tmin": 0.06, "restart_tmax": 0.30}


def restart_nfe(options: dict[str, Any]) -> int:
    """K restarts of N_Restart - 1 Heun steps between positive sigmas: 2 NFE per step."""
    k = options.get("restart_k", RESTART_DEFAULTS["restart_k"])
    n = options.get("restart_n", RESTART_DEFAULTS["restart_n"])
    return 2 * int(k) * max(int(n) - 1, 0)


def restart_point(sigmas: torch.Tensor, tmin: float) -> int:
    """Index of the positive grid sigma nearest t_min, after the first (the first on a tie)."""
    positive = [float(s) for s in sigmas if s > 0]
    if len(positive) < 2:
        return 0
    return min(range(1, len(positive)), key=lambda k: abs(positive[k] - tmin))


class _Offset:
    """The run's noise source seen from one inner Heun pass: its step i draws the stream's draw `start + i`.

    Inner churn takes plain per-seed draws (a Brownian path would repeat the main pass's increments on
    every restart of the same interval).
    """

    def __init__(self, noise: NoiseSource, start: int):
        self.noise, self.start = noise, start

    def increment(self, i: int, sigma: float, sigma_next: float, like: torch.Tensor) -> torch.Tensor:
        return self.noise.step(self.start + i, like)


@solver(
    "restart",
    order=2,
    stochastic=True,
    paper="Xu et al. 2023, Restart Sampling (NeurIPS), Alg. 1 and Table 3, with EDM's Heun as the ODE solver",
    evals_per_step=2,
    evals_final=1,
    min_steps=2,
    extra_nfe=restart_nfe,
    options=("restart_n", "restart_k", "restart_tmin", "restart_tmax", "restart_gamma", "S_min", "S_max", "S_noise"),
    conventions={
        "restart_n": "N_Restart: grid points of each restart interval (N_Restart - 1 Heun steps), as the paper",
        "restart_point": "the positive main-grid sigma nearest t_min",
        "inner_grid": "EDM rho = 7 grid from t_max to the restart point",
        "noise": "step noise of the stream: jump k at index N + k N_Restart, inner churn of step j after it",
    },
)
def restart(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    restart_n: int = 3,
    restart_k: int = 2,
    restart_tmin: float = 0.06,
    restart_tmax: float = 0.30,
    restart_gamma: float = 0.0,
    S_min: float = 0.01,
    S_max: float = 1.0,
    S_noise: float = 1.0,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Heun down the grid; at the point nearest t_min, K times: noise up to t_max, then N_Restart - 1 Heun
    steps back down (with churn restart_gamma on inner steps inside [S_min, S_max]) (Xu et al. 2023, Alg. 1)."""
    check_restart(restart_n, restart_k, restart_tmin, restart_tmax, restart_gamma)
    j = restart_point(sigmas, restart_tmin)
    s_lo, s_max = float(sigmas[j]), float(sigmas[0])  # the grid is descending: positive sigmas come first
    if restart_k > 0 and not s_lo < restart_tmax <= s_max:
        raise ConfigError(
            f"restart_tmax {restart_tmax} must lie above the restart point {s_lo:.4g} (the grid sigma nearest "
            f"restart_tmin) and at most sigma_max {s_max:.4g}"
        )
    n = len(sigmas) - 1

    def report(offset: int) -> Callback:  # the main-grid steps, numbered on the whole grid
        def call(info: StepInfo) -> None:
            if callback is not None:
                callback(StepInfo(info.i + offset, n, info.sigma, info.sigma_next, info.x, info.denoised))

        return call

    x = heun(denoiser, x, sigmas[: j + 1], callback=report(0))  # the main grid: no churn, no noise
    inner = edm_grid(restart_n, s_lo, restart_tmax)
    inner[-1] = s_lo  # land exactly on the main grid's sigma
    churn = {"churn_per_step": restart_gamma, "S_min": S_min, "S_max": S_max, "S_noise": S_noise}
    for k in range(restart_k):
        if noise is None:
            raise ConfigError("restart needs a noise source")
        start = n + k * restart_n  # after the main steps' draws; one for the jump, then one per inner step
        x = x + math.sqrt(restart_tmax**2 - s_lo**2) * S_noise * noise.step(start, x)
        x = heun(denoiser, x, inner, noise=_Offset(noise, start + 1), **churn)
    return heun(denoiser, x, sigmas[j:], callback=report(j))  # a one-point grid (j = n) keeps x


def check_restart(n: int, k: int, tmin: float, tmax: float, gamma: float) -> None:
    """The restart parameters a user can get wrong, each refused with one line."""
    if int(n) != n or n < 2:
        raise ConfigError(f"restart_n (N_Restart, grid points per restart) must be an integer >= 2, got {n}")
    if int(k) != k or k < 0:
        raise ConfigError(f"restart_k (K, the number of restarts) must be an integer >= 0, got {k}")
    if not (math.isfinite(tmin) and math.isfinite(tmax) and 0 < tmin < tmax):
        raise ConfigError(f"restart needs 0 < restart_tmin < restart_tmax (finite), got {tmin} and {tmax}")
    if not (math.isfinite(gamma) and 0 <= gamma <= math.sqrt(2) - 1):
        raise ConfigError(f"restart_gamma must be in [0, sqrt(2) - 1], got {gamma}")
