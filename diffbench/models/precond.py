"""Preconditioning wrappers: D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (Karras et al. 2022, Table 1).

Each wrapper holds a raw network `model(x, noise_labels, class_labels=None, **kwargs)` and supplies the
four coefficients; solvers never precondition. Attribute names follow EDM's networks so that a wrapper
is also a Denoiser (diffbench.denoiser).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


class Precond(nn.Module):
    """Shared forward pass of EDM Table 1; subclasses give the coefficients and the sigma range."""

    sigma_min: float
    sigma_max: float

    def __init__(
        self,
        model: nn.Module,
        *,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        out_channels: int | None = None,
    ):
        super().__init__()
        self.model = model
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.label_dim = int(label_dim)
        self.use_fp16 = bool(use_fp16)
        self.out_channels = out_channels  # keep only the first channels of F (iDDPM's learned variance)

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(c_skip, c_out, c_in, c_noise) for sigma of shape [B, 1, 1, 1] (float32)."""
        raise NotImplementedError

    def round_sigma(self, sigma):
        """Identity for continuous-time models."""
        return torch.as_tensor(sigma)

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        force_fp32: bool = False,
        **model_kwargs,
    ) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        # half precision only where it is fast and supported: CUDA
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and x.device.type == "cuda") else torch.float32
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        if self.out_channels is not None:
            F_x = F_x[:, : self.out_channels]
        return c_skip * x + c_out * F_x.to(torch.float32)


class VPPrecond(Precond):
    """Variance preserving, epsilon prediction, continuous t (Song et al. 2021; EDM Table 1 'VP')."""

    def __init__(
        self,
        model: nn.Module,
        *,
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,
        epsilon_t: float = 1e-5,
        **kwargs,
    ):
        super().__init__(model, **kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = (
            float(beta_d),
            float(beta_min),
            int(M),
            float(epsilon_t),
        )
        # EDM computes the range in float32 (sigma_min = 0.0009765625 with the defaults, REFERENCE §2)
        self.sigma_min = float(self.sigma(torch.tensor(self.epsilon_t, dtype=torch.float32)))
        self.sigma_max = float(self.sigma(torch.tensor(1.0, dtype=torch.float32)))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) (EDM Table 1, VP)."""
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        """t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(sigma^2 + 1)) - beta_min) / beta_d (EDM Table 1)."""
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma):
        # EDM Table 1, VP column
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / (sigma**2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return c_skip, c_out, c_in, c_noise


class VEPrecond(Precond):
    """Variance exploding, score network with noise conditioning ln(sigma/2) (EDM Table 1 'VE')."""

    def __init__(self, model: nn.Module, *, sigma_min: float = 0.02, sigma_max: float = 100.0, **kwargs):
        super().__init__(model, **kwargs)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def coefficients(self, sigma):
        # EDM Table 1, VE column
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()


def iddpm_u_table(M: int = 1000, C_1: float = 0.001, C_2: float = 0.008, dtype=torch.float32) -> torch.Tensor:
    """u_M = 0, u_{j-1} = sqrt((u_j^2 + 1) / max(abar_{j-1}/abar_j, C_1) - 1) (EDM Appendix C.3.4, Eq. 35)."""

    def alpha_bar(j: int) -> torch.Tensor:
        # cosine schedule of Nichol & Dhariwal 2021, as parameterised in EDM Eq. 35; tensor arithmetic in
        # float32 as EDM does, so the table (and round_sigma) matches its pickles bit for bit
        return (0.5 * math.pi * torch.as_tensor(j) / M / (C_2 + 1)).sin().to(dtype) ** 2

    u = torch.zeros(M + 1, dtype=dtype)
    for j in range(M, 0, -1):
        u[j - 1] = ((u[j] ** 2 + 1) / (alpha_bar(j - 1) / alpha_bar(j)).clip(min=C_1) - 1).sqrt()
    return u


class IDDPMPrecond(Precond):
    """Improved DDPM / ADM: discrete epsilon prediction on the u-table (EDM Table 1 'iDDPM')."""

    def __init__(self, model: nn.Module, *, C_1: float = 0.001, C_2: float = 0.008, M: int = 1000, **kwargs):
        kwargs.setdefault("out_channels", kwargs.get("img_channels"))
        super().__init__(model, **kwargs)
        self.C_1, self.C_2, self.M = float(C_1), float(C_2), int(M)
        self.register_buffer("u", iddpm_u_table(self.M, self.C_1, self.C_2), persistent=False)
        self.sigma_min = float(self.u[self.M - 1])
        self.sigma_max = float(self.u[0])

    def index(self, sigma: torch.Tensor) -> torch.Tensor:
        """Index j of the nearest u_j (EDM's round_sigma)."""
        s = torch.as_tensor(sigma).to(self.u.device, torch.float32).reshape(-1, 1)
        return (s - self.u.reshape(1, -1)).abs().argmin(dim=1)

    def round_sigma(self, sigma):
        """Snap to the nearest of the M+1 u-table entries (u_M = 0 included)."""
        sigma = torch.as_tensor(sigma)
        return self.u[self.index(sigma)].reshape(sigma.shape).to(sigma.device, sigma.dtype)

    def coefficients(self, sigma):
        # EDM Table 1, iDDPM column
        c_noise = (self.M - 1 - self.index(sigma)).to(torch.float32).reshape(sigma.shape)
        return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(), c_noise


class EDMPrecond(Precond):
    """EDM's own preconditioning (Karras et al. 2022, Table 1 'EDM', Eq. 7)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        sigma_min: float = 0.0,
        sigma_max: float = float("inf"),
        sigma_data: float = 0.5,
        **kwargs,
    ):
        super().__init__(model, **kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = (
            float(sigma_min),
            float(sigma_max),
            float(sigma_data),
        )

    def coefficients(self, sigma):
        sd = self.sigma_data
        # EDM Table 1, EDM column
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise


PREDICTIONS = ("epsilon", "v_prediction", "sample")


class DiscreteDDPMPrecond(Precond):
    """A discrete-time DDPM (Ho et al. 2020) in EDM form: sigma_k = sqrt((1 - abar_k) / abar_k).

    The raw network takes (x_t, timestep k, class_labels) with x_t = x / sqrt(1 + sigma^2) and predicts
    epsilon, v (Salimans & Ho 2022) or x0; timestep k is the index of the nearest sigma_k.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        betas: Sequence[float] | np.ndarray | torch.Tensor,
        prediction: str = "epsilon",
        **kwargs,
    ):
        super().__init__(model, **kwargs)
        if prediction not in PREDICTIONS:
            from diffbench.errors import UnknownNameError

            raise UnknownNameError("prediction type", prediction, PREDICTIONS)
        self.prediction = prediction
        betas = torch.as_tensor(np.asarray(betas, dtype=np.float64))
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        # Ho et al. 2020 Eq. 4 rewritten in EDM's sigma: x = x_t / sqrt(abar), sigma^2 = (1 - abar) / abar
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
        self.register_buffer("sigmas", sigmas, persistent=False)
        self.sigma_min = float(sigmas[0])
        self.sigma_max = float(sigmas[-1])

    def index(self, sigma: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma).to(self.sigmas.device, torch.float64).reshape(-1, 1)
        return (s - self.sigmas.reshape(1, -1)).abs().argmin(dim=1)

    def round_sigma(self, sigma):
        """Snap to the nearest of the discrete sigma_k."""
        sigma = torch.as_tensor(sigma)
        return self.sigmas[self.index(sigma)].reshape(sigma.shape).to(sigma.device, sigma.dtype)

    def coefficients(self, sigma):
        c_in = 1 / (sigma**2 + 1).sqrt()
        c_noise = self.index(sigma).to(torch.float32).reshape(sigma.shape)
        if self.prediction == "epsilon":  # D = x - sigma * eps
            return torch.ones_like(sigma), -sigma, c_in, c_noise
        if self.prediction == "v_prediction":  # x0 = alpha x_t - s v, alpha = c_in, s = sigma c_in
            return 1 / (sigma**2 + 1), -sigma * c_in, c_in, c_noise
        return torch.zeros_like(sigma), torch.ones_like(sigma), c_in, c_noise  # x0 prediction


def linear_betas(beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000) -> np.ndarray:
    """The linear beta schedule of Ho et al. 2020 (Sec. 4)."""
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
