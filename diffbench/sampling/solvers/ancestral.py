"""Ancestral samplers: Euler-ancestral / DDPM-ancestral with eta, and DDIM with eta, in EDM's sigma space."""

from __future__ import annotations

import math

import torch

from diffbench.denoiser import BoundDenoiser
from diffbench.errors import ConfigError
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.solvers import Callback, StepInfo, solver


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up): sigma_up = min(s', eta sqrt(s'^2 (s^2 - s'^2) / s^2)) (Song et al. 2021a, Eq. 16)."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def _check_eta(eta: float) -> None:
    if eta < 0:
        raise ConfigError(f"eta must be >= 0, got {eta}")


@solver(
    "euler-ancestral",
    order=1,
    stochastic=True,
    paper="Ho et al. 2020 (DDPM ancestral sampling) in EDM sigma space; eta from Song et al. 2021a (DDIM)",
    options=("eta", "S_noise"),
)
def euler_ancestral(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    eta: float = 1.0,
    S_noise: float = 1.0,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Euler step down to sigma_down, then fresh noise of std sigma_up (DDPM ancestral when eta = 1)."""
    _check_eta(eta)
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, s)
        down, up = ancestral_step(s, s_next, eta)
        x = x + (down - s) * (x - denoised) / s
        if up > 0:
            if noise is None:
                raise ConfigError("euler-ancestral with eta > 0 needs a noise source")
            x = x + noise.increment(i, s, s_next, x) * S_noise * up
        if callback is not None:
            callback(StepInfo(i, n, s, s_next, x, denoised))
    return x


@solver(
    "ddim",
    order=1,
    stochastic=False,
    paper="Song et al. 2021a, Denoising Diffusion Implicit Models, Eq. 12",
    options=("eta",),
)
def ddim(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    eta: float = 0.0,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM in its VP variables, abar = 1/(1 + sigma^2); deterministic at eta = 0 (Song et al. 2021a, Eq. 12, 16)."""
    _check_eta(eta)
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, s)
        if s_next == s:  # a zero-length step (round_sigma merged two sigmas) keeps x
            if callback is not None:
                callback(StepInfo(i, n, s, s_next, x, denoised))
            continue
        abar, abar_next = 1 / (1 + s * s), 1 / (1 + s_next * s_next)
        eps = (x - denoised) / s
        # sigma_eta = eta sqrt((1 - abar')/(1 - abar)) sqrt(1 - abar/abar')  (DDIM Eq. 16)
        sig_eta = eta * math.sqrt((1 - abar_next) / (1 - abar) * (1 - abar / abar_next))
        x_vp = math.sqrt(abar_next) * denoised + math.sqrt(max(1 - abar_next - sig_eta**2, 0.0)) * eps
        if sig_eta > 0:
            if noise is None:
                raise ConfigError("ddim with eta > 0 needs a noise source")
            x_vp = x_vp + sig_eta * noise.increment(i, s, s_next, x)
        x = x_vp / math.sqrt(abar_next)  # back to EDM space: x = x_vp / sqrt(abar)
        if callback is not None:
            callback(StepInfo(i, n, s, s_next, x, denoised))
    return x
