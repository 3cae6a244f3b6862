"""initial_state: the one place x_0 is drawn, x_0 = z sigma_max from each seed's first draw (REFERENCE §1)."""

from __future__ import annotations

import pytest
import torch

import diffbench
from diffbench.errors import ConfigError
from diffbench.sampling.initial import GaussianPrior, initial_state
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.plan import plan

MODEL = diffbench.load("gmm:shape=2x3x3,cond=true")
SHAPE = tuple(MODEL.sample_shape)
PLAN = plan(MODEL, solver="heun", schedule="edm", nfe=9)


def test_x0_is_each_seeds_first_draw_times_the_first_sigma():
    x0 = initial_state(NoiseSource([3, 4]), PLAN, SHAPE)
    z = torch.stack([torch.randn(SHAPE, generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
    assert x0.dtype == torch.float64 and PLAN.sigma_first == 80.0
    torch.testing.assert_close(x0, z.to(torch.float64) * 80.0, rtol=0, atol=0)
    x32 = initial_state(NoiseSource([3, 4]), PLAN, SHAPE, dtype=torch.float32)
    torch.testing.assert_close(x32, z * 80.0, rtol=0, atol=0)


def test_x0_does_not_depend_on_the_batch():
    batch = initial_state(NoiseSource([0, 1, 2]), PLAN, SHAPE)
    alone = torch.cat([initial_state(NoiseSource([s]), PLAN, SHAPE) for s in (0, 1, 2)])
    torch.testing.assert_close(batch, alone, rtol=0, atol=0)


def test_given_latents_replace_the_draw_and_keep_the_streams_aligned():
    noise, ref = NoiseSource([5, 6]), NoiseSource([5, 6])
    latents = torch.ones(2, *SHAPE, dtype=torch.float64)
    x0 = initial_state(noise, PLAN, SHAPE, latents=latents)
    torch.testing.assert_close(x0, latents * 80.0, rtol=0, atol=0)
    ref.latents(SHAPE)
    assert noise.labels(3).tolist() == ref.labels(3).tolist()  # the label is still the stream's second draw
    with pytest.raises(ConfigError, match="latents of shape"):
        initial_state(NoiseSource([5, 6]), PLAN, SHAPE, latents=torch.ones(2, 3))


def test_a_prior_replaces_the_gaussian_start():
    class Constant:
        def draw(self, noise, sigma, shape, dtype):
            return torch.full((len(noise.seeds), *shape), sigma, dtype=dtype)

    x0 = initial_state(NoiseSource([0, 1]), PLAN, SHAPE, prior=Constant())
    assert x0.shape == (2, *SHAPE) and bool((x0 == 80.0).all())
    with pytest.raises(ConfigError, match="latents apply to the N"):
        initial_state(NoiseSource([0]), PLAN, SHAPE, latents=torch.ones(1, *SHAPE), prior=Constant())
    same = initial_state(NoiseSource([0]), PLAN, SHAPE, prior=GaussianPrior())
    torch.testing.assert_close(same, initial_state(NoiseSource([0]), PLAN, SHAPE), rtol=0, atol=0)


def test_the_sampler_starts_from_initial_state():
    """A one-step edm plan is the step to 0 from x_0, x = D(x_0; sigma_max): the run started at initial_state."""
    out = diffbench.sample(MODEL, seeds=[7], solver="euler", steps=1, device="cpu", class_labels=[1])
    x0 = initial_state(NoiseSource([7]), PLAN, SHAPE)
    want = MODEL(x0, torch.full((1,), 80.0, dtype=torch.float64), torch.eye(3)[[1]])
    # Euler writes the step as x + h (x - D) / sigma: equal to D up to rounding
    torch.testing.assert_close(out.images, want.to(out.images.dtype), rtol=1e-12, atol=1e-12)
