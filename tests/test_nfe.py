"""Exact NFE budgets: counted evaluations equal the plan for every solver, schedule and endpoint convention."""

from __future__ import annotations

import re

import pytest
import torch

import diffbench
from diffbench.errors import BudgetError, ConfigError
from diffbench.sampling.plan import plan
from diffbench.sampling.schedules import SCHEDULES
from diffbench.sampling.solvers import all_solvers, get_solver

SOLVER_NAMES = [s.name for s in all_solvers()]
CONVENTIONS = [("edm", False), ("sigma_min", False), ("sigma_min", True)]


class Counting:
    """A duck-typed Denoiser that counts its own calls, independent of diffbench's counter."""

    sigma_min, sigma_max, img_channels, img_resolution, label_dim = 0.0, float("inf"), 2, 1, 0
    sample_shape = (2,)

    def __init__(self):
        self.rows = 0

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def __call__(self, x, sigma, class_labels=None):
        self.rows += x.shape[0]
        return 0.5 * x / (1 + sigma.reshape(-1, 1) ** 2)


@pytest.mark.parametrize("solver", SOLVER_NAMES)
@pytest.mark.parametrize("endpoint,dtz", CONVENTIONS)
def test_counted_equals_planned_for_every_reachable_budget(solver, endpoint, dtz):
    info = get_solver(solver)
    for nfe in range(1, 12):
        steps = info.steps_for(nfe, endpoint=endpoint, denoise_to_zero=dtz)
        if steps is None:
            continue
        for schedule in SCHEDULES:
            if schedule == "iddpm" and steps > 500:
                continue
            model = Counting()
            out = diffbench.sample(
                model,
                seeds=[0, 1, 2],
                solver=solver,
                schedule=schedule,
                nfe=nfe,
                endpoint=endpoint,
                denoise_to_zero=dtz,
                device="cpu",
            )
            assert out.nfe == nfe
            assert model.rows == 3 * nfe, (solver, schedule, endpoint, nfe)


def test_heun_nfe_35_is_18_steps(gmm):
    p = plan(gmm, solver="heun", schedule="edm", nfe=35)
    assert p.steps == 18
    assert get_solver("heun").nfe(40, endpoint="edm") == 79
    assert get_solver("heun").nfe(256, endpoint="edm") == 511
    assert get_solver("heun").nfe(18, endpoint="sigma_min") == 36


def test_even_budget_for_heun_is_refused_with_nearest(gmm):
    with pytest.raises(BudgetError, match="nearest reachable: 35 or 37"):
        plan(gmm, solver="heun", schedule="edm", nfe=36)
    assert plan(gmm, solver="heun", schedule="edm", nfe=36, nfe_policy="floor").nfe == 35
    assert plan(gmm, solver="heun", schedule="edm", nfe=36, nfe_policy="nearest").nfe == 35
    # under sigma_min the reachable Heun budgets are even
    assert plan(gmm, solver="heun", schedule="edm", nfe=36, endpoint="sigma_min").steps == 18
    with pytest.raises(BudgetError, match="nearest reachable: 34 or 36"):
        plan(gmm, solver="heun", schedule="edm", nfe=35, endpoint="sigma_min")


def test_budget_and_step_options_are_checked(gmm):
    with pytest.raises(ConfigError, match="exactly one of nfe and steps"):
        plan(gmm, solver="euler", schedule="edm", nfe=5, steps=5)
    with pytest.raises(BudgetError):
        plan(gmm, solver="euler", schedule="edm", nfe=0)
    with pytest.raises(ConfigError, match="denoise_to_zero applies only"):
        plan(gmm, solver="euler", schedule="edm", nfe=5, denoise_to_zero=True)


def test_counting_mismatch_is_a_bug_that_raises(gmm, monkeypatch):
    def lazy(denoiser, x, sigmas, *, noise=None, callback=None, **_):
        return denoiser(x, float(sigmas[0]))  # one call, whatever the plan

    from diffbench.sampling import solvers as registry

    fake = registry.SolverInfo(name="euler", fn=lazy, order=1, stochastic=False, paper="-")
    monkeypatch.setitem(registry.SOLVERS, "euler", fake)
    with pytest.raises(RuntimeError, match="bug: euler made 1.0 evaluations"):
        diffbench.sample(gmm, seeds=[0], solver="euler", nfe=5, device="cpu")


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_every_unreachable_budget_is_refused_with_the_nearest(solver, gmm):
    info = get_solver(solver)
    for endpoint, dtz in CONVENTIONS:
        for nfe in range(1, 30):
            if info.steps_for(nfe, endpoint=endpoint, denoise_to_zero=dtz) is not None:
                continue
            with pytest.raises(BudgetError, match=r"nearest reachable: \d+|too small") as exc:
                plan(gmm, solver=solver, schedule="edm", nfe=nfe, endpoint=endpoint, denoise_to_zero=dtz)
            for near in map(int, re.findall(r"(\d+)(?= or|\. Use)", str(exc.value))):
                assert info.steps_for(near, endpoint=endpoint, denoise_to_zero=dtz) is not None


@pytest.mark.parametrize("solver", SOLVER_NAMES)
@pytest.mark.parametrize("endpoint,dtz", CONVENTIONS)
def test_first_reachable_budgets_draw_samples(solver, endpoint, dtz):
    """Each solver at its first five reachable budgets (restart's: 11-19 or 12-20) samples, finite, exact NFE."""
    info = get_solver(solver)
    budgets = [k for k in range(1, 80) if info.steps_for(k, endpoint=endpoint, denoise_to_zero=dtz)][:5]
    assert len(budgets) == 5
    for nfe in budgets:
        model = Counting()
        out = diffbench.sample(
            model, seeds=[0, 1], solver=solver, nfe=nfe, endpoint=endpoint, denoise_to_zero=dtz, device="cpu"
        )
        assert out.images.shape == (2, 2) and torch.isfinite(out.images).all()
        assert out.nfe == nfe and model.rows == 2 * nfe, (solver, endpoint, nfe)
        assert not torch.equal(out.images, torch.zeros_like(out.images))
