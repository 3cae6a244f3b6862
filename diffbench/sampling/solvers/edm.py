"""Euler and the general 2nd-order Heun family with EDM churn, on EDM's general ODE (Karras et al. 2022, Alg. 1-2)."""

from __future__ import annotations

import math

import torch

from diffbench.denoiser import BoundDenoiser
from diffbench.errors import ConfigError
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.ode import EDM_ODE, TimeParam
from diffbench.sampling.solvers import Callback, StepInfo, round_sigma, solver

EDM_PAPER = "Karras et al. 2022, Elucidating the Design Space (EDM), Alg. 2"
MAX_GAMMA = math.sqrt(2) - 1  # EDM Alg. 2: gamma_i <= sqrt(2) - 1


def churn_gammas(
    sigmas: torch.Tensor,
    *,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = math.inf,
    churn_per_step: float | None = None,
) -> list[float]:
    """gamma_i = min(S_churn/N, sqrt2 - 1) for S_min <= sigma_i <= S_max, else 0 (EDM Alg. 2, line 4).

    `churn_per_step` gives gamma directly (independent of N, so an NFE sweep keeps the same stochasticity).
    """
    n = len(sigmas) - 1
    if n < 1:  # no steps (e.g. a restart point at the grid's last sigma): nothing to churn
        return []
    g = churn_per_step if churn_per_step is not None else S_churn / n
    g = min(max(g, 0.0), MAX_GAMMA)
    return [g if S_min <= float(s) <= S_max else 0.0 for s in sigmas[:-1]]


def _churn(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    t: float,
    gamma: float,
    i: int,
    ode: TimeParam,
    noise: NoiseSource | None,
    S_noise: float,
    sigma_next: float,
) -> tuple[torch.Tensor, float]:
    """Raise the noise level from sigma(t) to sigma_hat = sigma(1 + gamma) (EDM Alg. 2, lines 5-6)."""
    if gamma == 0:
        return x, t
    if noise is None:
        raise ConfigError("churn needs a noise source")
    sig = ode.sigma(t)
    t_hat = ode.sigma_inv(round_sigma(denoiser, sig + gamma * sig))
    sig_hat = ode.sigma(t_hat)
    eps = noise.increment(i, sig, sigma_next, x)
    x_hat = ode.s(t_hat) / ode.s(t) * x + math.sqrt(max(sig_hat**2 - sig**2, 0.0)) * ode.s(t_hat) * S_noise * eps
    return x_hat, t_hat


def _slope(denoiser: BoundDenoiser, x: torch.Tensor, t: float, ode: TimeParam) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx/dt, D) of EDM Eq. 4 at (x, t)."""
    if ode.trivial:  # sigma(t) = t, s = 1: dx/dsigma = (x - D) / sigma (EDM Eq. 3)
        denoised = denoiser(x, t)
        return (x - denoised).div_(t), denoised
    s = ode.s(t)
    denoised = denoiser(x / s, ode.sigma(t))
    a, b = ode.coefficients(t)
    return torch.add(a * x, denoised, alpha=-b), denoised


def _times(sigmas: torch.Tensor, ode: TimeParam) -> list[float]:
    """t_i = sigma^-1(sigma_i), with t = 0 at sigma = 0."""
    return [ode.sigma_inv(float(s)) if s > 0 else 0.0 for s in sigmas]


@solver(
    "euler",
    order=1,
    stochastic=False,
    paper="Euler's method; " + EDM_PAPER + " (Alg. 1 with first-order steps)",
    churn=True,
    ode_axes=True,
    options=("S_churn", "S_min", "S_max", "S_noise", "churn_per_step"),
)
def euler(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    ode: TimeParam = EDM_ODE,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = math.inf,
    S_noise: float = 1.0,
    churn_per_step: float | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Euler steps on EDM's general ODE, with optional churn (Karras et al. 2022, Alg. 2 without line 9-11)."""
    t = _times(sigmas, ode)
    gammas = churn_gammas(sigmas, S_churn=S_churn, S_min=S_min, S_max=S_max, churn_per_step=churn_per_step)
    n = len(sigmas) - 1
    x = ode.scaled(x, t[0])  # the ODE state s(t) x; reports and the result are in EDM space
    for i in range(n):
        x_hat, t_hat = _churn(denoiser, x, t[i], gammas[i], i, ode, noise, S_noise, float(sigmas[i + 1]))
        d, denoised = _slope(denoiser, x_hat, t_hat, ode)
        x = torch.add(x_hat, d, alpha=t[i + 1] - t_hat)
        if callback is not None:
            callback(StepInfo(i, n, float(sigmas[i]), float(sigmas[i + 1]), ode.unscaled(x, t[i + 1]), denoised))
    return ode.unscaled(x, t[-1])


@solver(
    "heun",
    order=2,
    stochastic=False,
    paper=EDM_PAPER + "; alpha = 1/2 is the midpoint method (Sec. 3)",
    evals_per_step=2,
    evals_final=1,
    churn=True,
    ode_axes=True,
    options=("alpha", "S_churn", "S_min", "S_max", "S_noise", "churn_per_step"),
)
def heun(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    ode: TimeParam = EDM_ODE,
    alpha: float = 1.0,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = math.inf,
    S_noise: float = 1.0,
    churn_per_step: float | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """General 2nd-order Runge-Kutta with parameter alpha (EDM Alg. 2 / ablation sampler); Euler on a step to 0."""
    if not 0 < alpha <= 1:
        raise ConfigError(f"alpha must be in (0, 1], got {alpha}")
    t = _times(sigmas, ode)
    gammas = churn_gammas(sigmas, S_churn=S_churn, S_min=S_min, S_max=S_max, churn_per_step=churn_per_step)
    n = len(sigmas) - 1
    x = ode.scaled(x, t[0])  # the ODE state s(t) x; reports and the result are in EDM space
    for i in range(n):
        x_hat, t_hat = _churn(denoiser, x, t[i], gammas[i], i, ode, noise, S_noise, float(sigmas[i + 1]))
        h = t[i + 1] - t_hat
        d, denoised = _slope(denoiser, x_hat, t_hat, ode)
        if sigmas[i + 1] == 0:
            x = torch.add(x_hat, d, alpha=h)  # EDM Alg. 2 line 8: no correction on the step to sigma = 0
        else:
            # x' = x_hat + alpha h d; x_next = x_hat + h((1 - 1/(2 alpha)) d + d'/(2 alpha))  (EDM Alg. 2 / Sec. 3)
            t_prime = t_hat + alpha * h
            d_prime, _ = _slope(denoiser, torch.add(x_hat, d, alpha=alpha * h), t_prime, ode)
            if alpha == 1:
                slope = d.add_(d_prime).mul_(0.5)
            else:
                slope = d.mul_(1 - 1 / (2 * alpha)).add_(d_prime, alpha=1 / (2 * alpha))
            x = torch.add(x_hat, slope, alpha=h)
        if callback is not None:
            callback(StepInfo(i, n, float(sigmas[i]), float(sigmas[i + 1]), ode.unscaled(x, t[i + 1]), denoised))
    return ode.unscaled(x, t[-1])
