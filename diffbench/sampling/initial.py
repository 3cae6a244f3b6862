"""The starting state of a run: the one place x_0 is drawn (REFERENCE §1), per seed and batch-size invariant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from diffbench.errors import ConfigError
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.plan import Plan


class Prior(Protocol):
    """A distribution to start sampling from at `sigma`: draws x_0 [B, *shape] in `dtype` from the seeds' streams."""

    def draw(self, noise: NoiseSource, sigma: float, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor: ...


class GaussianPrior:
    """N(0, sigma^2 I): x_0 = z * sigma with z the stream's first draw (EDM, Alg. 1 line 2; REFERENCE §1)."""

    def draw(self, noise: NoiseSource, sigma: float, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        return noise.latents(shape).to(dtype) * sigma  # EDM: x_0 = latents * sigma_0

    def log_prob(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        """log N(x; 0, sigma^2 I) [B] of flattened x [B, D] (float64): -|x|^2/(2 sigma^2) - D/2 log(2 pi sigma^2)."""
        import math

        assert sigma is not None, "the N(0, sigma^2 I) start's density needs its sigma"
        x = x.to(torch.float64)
        return -(x * x).sum(1) / (2 * sigma**2) - 0.5 * x.shape[1] * math.log(2 * math.pi * sigma**2)

    def describe(self) -> dict[str, object]:
        return {"kind": "normal"}


GAUSSIAN = GaussianPrior()


def initial_state(
    noise: NoiseSource,
    plan: Plan,
    shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float64,
    latents: torch.Tensor | None = None,
    prior: Prior | None = None,
) -> torch.Tensor:
    """x_0 [B, *shape] in `dtype` on the noise's device, at the plan's first sigma (sigma_max of the grid).

    `noise` must not have drawn yet: x_0 is the first draw of every seed's stream (then the label, then step
    noise). `latents` (standard normal, [B, *shape]) replace the stream's draw after it is made, so the streams
    stay aligned; they apply only to the Gaussian start. `prior` (default N(0, sigma_max^2 I)) draws x_0
    instead; an auxiliary prior of the noised data replaces it here and nowhere else.
    Raises ConfigError for latents of another shape or latents combined with a non-Gaussian prior.
    """
    prior = GAUSSIAN if prior is None else prior
    sigma = plan.sigma_first
    if latents is None:
        return prior.draw(noise, sigma, shape, dtype)
    if not isinstance(prior, GaussianPrior):
        raise ConfigError("latents apply to the N(0, sigma_max^2 I) start, not to another prior")
    want = (len(noise.seeds), *(int(s) for s in shape))
    if tuple(latents.shape) != want:
        raise ConfigError(f"latents of shape {list(latents.shape)}, expected {list(want)}")
    noise.latents(shape)  # drawn even when latents are given, to keep the streams aligned
    # the user's latents as given: float64 ones stay float64 in a float64 run
    return latents.to(noise.device).to(dtype) * sigma  # EDM: x_0 = latents * sigma_0
