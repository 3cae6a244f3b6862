"""Solvers of the core issue on the analytic mixture: convergence orders and exact equivalences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffbench
from diffbench.models.analytic import reference_solution
from diffbench.sampling.noise import NoiseSource


@pytest.fixture(scope="module")
def problem():
    model = diffbench.load("gmm")
    z = NoiseSource(range(3)).latents(model.sample_shape)
    ref = reference_solution(model, z.double() * 80, sigma_from=80.0, sigma_to=0.002)
    return model, z, ref


def rms(a, b):
    return float(((a - b) ** 2).mean().sqrt())


def slope(model, z, ref, steps, **kw):
    errs = [
        rms(diffbench.sample(model, latents=z, steps=n, endpoint="sigma_min", device="cpu", **kw).images, ref)
        for n in steps
    ]
    return np.polyfit(np.log(steps), np.log(errs), 1)[0], errs


@pytest.mark.parametrize(
    "solver,kw,order",
    [
        ("euler", {}, 1),
        ("heun", {}, 2),
        ("heun", {"alpha": 0.5}, 2),
        ("ddim", {}, 1),
    ],
)
def test_convergence_order_on_the_mixture(problem, solver, kw, order):
    model, z, ref = problem
    s, errs = slope(model, z, ref, [16, 32, 64, 128], solver=solver, **kw)
    assert -s == pytest.approx(order, abs=0.25), errs


@pytest.mark.parametrize(
    "sigma_t,scaling,schedule", [("vp", "vp", "vp"), ("ve", "none", "ve"), ("linear", "vp", "edm")]
)
def test_ode_axes_solve_the_same_ode(problem, sigma_t, scaling, schedule):
    """EDM's general ODE in other sigma(t)/s(t) has the same solution: the 'original VP/VE' samplers converge."""
    model, z, ref = problem
    s, errs = slope(model, z, ref, [32, 64, 128], solver="heun", sigma_t=sigma_t, scaling=scaling, schedule="edm")
    assert errs[-1] < 5e-3 and -s > 1.7, errs
    out = diffbench.sample(
        model,
        latents=z,
        steps=256,
        solver="heun",
        schedule=schedule,
        sigma_t=sigma_t,
        scaling=scaling,
        endpoint="sigma_min",
        sigma_min=0.002,
        sigma_max=80.0,
        device="cpu",
    )
    assert rms(out.images, ref) < 5e-3


def test_churn_zero_equals_deterministic(gmm):
    a = diffbench.sample(gmm, seeds=range(4), solver="heun", nfe=35, device="cpu")
    b = diffbench.sample(
        gmm,
        seeds=range(4),
        solver="heun",
        nfe=35,
        S_churn=0.0,
        S_min=0.05,
        S_max=50.0,
        S_noise=1.003,
        device="cpu",
    )
    assert torch.equal(a.images, b.images)
    c = diffbench.sample(gmm, seeds=range(4), solver="heun", nfe=35, S_churn=40.0, device="cpu")
    assert not torch.equal(a.images, c.images)


def test_ddim_eta0_equals_euler_on_the_same_grid(gmm):
    for schedule in ("vp", "edm", "iddpm"):
        a = diffbench.sample(gmm, seeds=range(4), solver="ddim", eta=0.0, steps=12, schedule=schedule, device="cpu")
        b = diffbench.sample(gmm, seeds=range(4), solver="euler", steps=12, schedule=schedule, device="cpu")
        assert torch.allclose(a.images, b.images, rtol=0, atol=1e-11)


def test_ddim_eta_equals_ddpm_ancestral_split(gmm):
    """DDIM with eta in VP variables and Euler-ancestral in sigma space are the same update."""
    a = diffbench.sample(gmm, seeds=range(4), solver="ddim", eta=0.7, steps=10, device="cpu")
    b = diffbench.sample(gmm, seeds=range(4), solver="euler-ancestral", eta=0.7, steps=10, device="cpu")
    assert torch.allclose(a.images, b.images, rtol=0, atol=1e-9)


def test_churn_per_step_keeps_gamma_fixed_across_budgets():
    from diffbench.sampling.solvers.edm import MAX_GAMMA, churn_gammas

    g10 = churn_gammas(torch.linspace(80, 0, 11), churn_per_step=0.1)
    g40 = churn_gammas(torch.linspace(80, 0, 41), churn_per_step=0.1)
    assert set(g10) == {0.1} and set(g40) == {0.1}
    total = churn_gammas(torch.linspace(80, 0, 11), S_churn=2.0, S_min=1.0, S_max=50.0)  # 80, 72, ..., 8
    assert total[:4] == [0, 0, 0, 0] and total[4] == pytest.approx(0.2) and total[-1] == pytest.approx(0.2)
    assert churn_gammas(torch.linspace(80, 0, 3), S_churn=100.0)[0] == pytest.approx(MAX_GAMMA)


def test_options_that_do_not_apply_are_refused(gmm):
    from diffbench.errors import ConfigError, UnknownNameError

    with pytest.raises(ConfigError, match="do not apply to solver 'euler'"):
        diffbench.sample(gmm, seeds=[0], solver="euler", nfe=5, alpha=0.5)
    with pytest.raises(ConfigError, match="euler/heun family"):
        diffbench.sample(gmm, seeds=[0], solver="ddim", nfe=5, sigma_t="vp")
    with pytest.raises(UnknownNameError, match="sampler option"):
        diffbench.sample(gmm, seeds=[0], solver="euler", nfe=5, S_chrun=1.0)
    with pytest.raises(ConfigError, match="alpha must be"):
        diffbench.sample(gmm, seeds=[0], solver="heun", nfe=5, alpha=0.0)
