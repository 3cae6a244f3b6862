"""Discrete models: round_sigma merges grid points at high step counts; every solver takes the zero-length
steps (x unchanged, the planned evaluations spent) and stays finite, with counted NFE equal to the plan."""

from __future__ import annotations

import math

import pytest
import torch

import diffbench
import diffbench.sampling.noise
from diffbench.models.precond import DiscreteDDPMPrecond, linear_betas
from diffbench.sampling.plan import plan
from diffbench.sampling.solvers import all_solvers, get_solver


class Eps(torch.nn.Module):
    """A smooth epsilon-prediction network: eps(x_t, k) = 0.5 x_t."""

    def forward(self, x, noise_labels, class_labels=None):
        return 0.5 * x


class Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.rows = inner, 0
        for k in ("sigma_min", "sigma_max", "img_channels", "img_resolution", "label_dim"):
            setattr(self, k, getattr(inner, k))

    def round_sigma(self, sigma):
        return self.inner.round_sigma(sigma)

    def forward(self, x, sigma, class_labels=None):
        self.rows += x.shape[0]
        return self.inner(x, sigma, class_labels)


def ddpm():
    # a 1000-step linear-beta DDPM (Ho et al. 2020), as in the bug report: 72 EDM steps merge levels near sigma_min
    return DiscreteDDPMPrecond(Eps(), betas=linear_betas(), img_resolution=2, img_channels=1)


def test_the_grid_merges_levels():
    p = plan(ddpm(), solver="euler", schedule="edm", steps=72)
    assert p.merged_steps > 0 and p.distinct_levels < 73


@pytest.mark.parametrize("solver", [s.name for s in all_solvers()])
@pytest.mark.parametrize("endpoint", ["edm", pytest.param("sigma_min", marks=pytest.mark.slow)])
def test_every_solver_takes_merged_steps(solver, endpoint):
    model = Counting(ddpm())
    p = plan(model, solver=solver, schedule="edm", steps=72, endpoint=endpoint)
    assert p.merged_steps > 0
    out = diffbench.sample(model, seeds=[0, 1], solver=solver, steps=72, endpoint=endpoint, device="cpu")
    assert torch.isfinite(out.images).all()
    assert out.nfe == p.nfe and model.rows == 2 * p.nfe
    # dx/dsigma = eps = 0.5 x / sqrt(1 + sigma^2): x(s) = x(s0) exp((asinh s - asinh s0) / 2), then x = D at the end
    s0, s_end = p.sigma_first, p.sigma_last_positive
    z = diffbench.sampling.noise.NoiseSource([0, 1]).latents((1, 2, 2)).double()
    x = z * s0 * math.exp(0.5 * (math.asinh(s_end) - math.asinh(s0)))
    if endpoint == "edm":
        x = x - s_end * 0.5 * x / math.sqrt(1 + s_end**2)
    rel = float((out.images - x).norm() / x.norm())
    assert rel < (0.05 if not get_solver(solver).stochastic else 3.0), rel


@pytest.mark.parametrize("solver", [s.name for s in all_solvers()])
def test_a_zero_length_step_leaves_x_unchanged(solver):
    from diffbench.sampling.noise import NoiseSource
    from diffbench.sampling.schedules import edm_grid
    from diffbench.sampling.solvers import get_solver

    model = diffbench.load("gmm")
    grid = edm_grid(12, 0.002, 80.0)
    grid = torch.cat([grid[:6], grid[5:6], grid[6:], grid.new_zeros(1)])  # sigma_5 twice: step 5 has length 0
    noise = NoiseSource([0, 1])
    x0 = noise.latents(model.sample_shape).double() * 80.0
    states = []

    def D(x, sigma):
        return model(x, torch.full((x.shape[0],), float(sigma), dtype=torch.float64))

    get_solver(solver).fn(D, x0, grid, noise=noise, callback=lambda info: states.append(info.x.clone()))
    assert len(states) == len(grid) - 1 and all(torch.isfinite(s).all() for s in states)
    assert torch.equal(states[5], states[4])
