"""Stochastic solvers sample the right distribution: moments on an analytic mixture against its exact ones.

Thousands of samples of a 2-D mixture in one batch; the tolerance is the Monte Carlo standard error of each
moment (from the exact fourth moments, estimated by the samples) times 5, plus a small allowance for the
discretisation at these budgets. Slow: run with -m slow.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffbench.models.analytic import load_builtin
from diffbench.sampling.schedules import edm_grid
from diffbench.sampling.solvers import get_solver

MODEL = load_builtin("gmm:components=3,shape=2,cov=full,seed=1")
N = 20_000


class Batched:
    """One generator for the whole batch (moments only need independent normals)."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def step(self, i, like):
        return torch.randn(like.shape, generator=self.g, dtype=like.dtype)

    def increment(self, i, sigma, sigma_next, like):
        return self.step(i, like)


def D(x, sigma):
    return MODEL(x, torch.full((x.shape[0],), float(sigma), dtype=torch.float64))


CASES = [
    ("euler-ancestral", {"eta": 1.0}, 80),
    ("euler-ancestral", {"eta": 0.5}, 80),
    ("dpmpp-2m-sde", {"eta": 1.0}, 60),
    ("ddim", {"eta": 1.0}, 80),
    ("heun", {"S_churn": 40.0, "S_min": 0.05, "S_max": 5.0}, 40),
    ("euler", {"S_churn": 20.0}, 120),
]


@pytest.mark.slow
@pytest.mark.parametrize("solver,options,steps", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_sample_moments_equal_the_mixtures(solver, options, steps):
    sig = torch.cat([edm_grid(steps, 0.002, 80.0), torch.zeros(1, dtype=torch.float64)])
    z = torch.randn(N, 2, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    x = get_solver(solver).fn(D, z * float(sig[0]), sig, noise=Batched(7), **options)
    mu, cov = MODEL.mean(), MODEL.covariance()
    data = MODEL.sample_data(200_000, torch.Generator().manual_seed(5))  # for the moments' MC errors
    se_mu = data.std(0) / math.sqrt(N)
    c = data - mu
    se_cov = (c[:, :, None] * c[:, None, :]).std(0) / math.sqrt(N)
    got_mu, got_cov = x.mean(0), torch.cov(x.T)
    assert ((got_mu - mu).abs() <= 5 * se_mu + 0.01).all(), (got_mu, mu)
    assert ((got_cov - cov).abs() <= 5 * se_cov + 0.01).all(), (got_cov, cov)


@pytest.mark.slow
def test_wrong_noise_amplitude_is_outside_the_tolerance():
    """The check above has power: S_noise = 1.3 in the ancestral step widens the samples past it."""
    sig = torch.cat([edm_grid(80, 0.002, 80.0), torch.zeros(1, dtype=torch.float64)])
    z = torch.randn(N, 2, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    x = get_solver("euler-ancestral").fn(D, z * float(sig[0]), sig, noise=Batched(7), S_noise=1.3)
    data = MODEL.sample_data(200_000, torch.Generator().manual_seed(5))
    c = data - MODEL.mean()
    se_cov = (c[:, :, None] * c[:, None, :]).std(0) / math.sqrt(N)
    assert ((torch.cov(x.T) - MODEL.covariance()).abs() > 5 * se_cov + 0.01).any()
