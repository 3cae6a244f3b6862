"""Plan.costs: network evaluations of each step, and exact budgets when an evaluation's cost depends on sigma.

With one network every evaluation costs 1 and the plans are today's (steps_for of the NFE rule); a cost
function (what guidance in a sigma interval will give) makes steps differ in cost, and the planner still
meets the budget exactly, with the evaluator's count equal to the plan.
"""

from __future__ import annotations

import pytest
import torch

import diffbench
from diffbench.denoiser import MAIN, Evaluator
from diffbench.errors import BudgetError, ConfigError
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.plan import plan
from diffbench.sampling.solvers import all_solvers, get_solver

MODEL = diffbench.load("gmm:shape=2x3x3")
NAMES = [s.name for s in all_solvers()]


def twice_above_one(sigma: float) -> int:
    """A test cost: two network evaluations where sigma > 1 (as guidance in an interval would), one below."""
    return 2 if sigma > 1 else 1


def test_heun_costs_two_per_step_and_one_on_the_step_to_zero():
    p = plan(MODEL, solver="heun", schedule="edm", nfe=35)
    assert p.steps == 18 and p.costs == (2,) * 17 + (1,) and sum(p.costs) == p.nfe == 35


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("endpoint,dtz", [("edm", False), ("sigma_min", False), ("sigma_min", True)])
def test_unit_costs_sum_to_the_nfe_rule(name, endpoint, dtz):
    info = get_solver(name)
    budgets = [k for k in range(1, 60) if info.steps_for(k, endpoint=endpoint, denoise_to_zero=dtz)][:3]
    for nfe in budgets:
        p = plan(MODEL, solver=name, schedule="edm", nfe=nfe, endpoint=endpoint, denoise_to_zero=dtz)
        q = plan(MODEL, solver=name, schedule="edm", nfe=nfe, endpoint=endpoint, denoise_to_zero=dtz, cost=lambda s: 1)
        assert len(p.costs) == len(p.sigmas) - 1 and sum(p.costs) == p.nfe == nfe  # one per grid interval
        assert (q.steps, q.costs, q.nfe) == (p.steps, p.costs, p.nfe) and torch.equal(q.sigmas, p.sigmas)


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp-2m", "dpm-solver-2", "restart"])
def test_a_sigma_dependent_cost_meets_every_budget_it_can_exactly(name):
    hit = 0
    for nfe in range(4, 40):
        try:
            p = plan(MODEL, solver=name, schedule="edm", nfe=nfe, cost=twice_above_one)
        except BudgetError as exc:
            assert "nearest reachable" in str(exc)
            continue
        hit += 1
        assert sum(p.costs) == p.nfe == nfe
        unit = plan(MODEL, solver=name, schedule="edm", steps=p.steps)
        assert p.nfe > unit.nfe  # some evaluations fall above sigma = 1
    assert hit >= 5


def test_the_costed_budget_is_the_fewest_steps_and_policies_pick_a_neighbour():
    nfe = next(n for n in range(15, 60) if _reachable(n))
    p = plan(MODEL, solver="euler", schedule="edm", nfe=nfe, cost=twice_above_one)
    for steps in range(1, p.steps):
        assert sum(plan(MODEL, solver="euler", schedule="edm", steps=steps, cost=twice_above_one).costs) != nfe
    missing = next(n for n in range(4, 60) if not _reachable(n) and _reachable(n - 1))  # no step count spends it
    with pytest.raises(BudgetError, match=rf"cannot spend exactly {missing} network evaluations.*nearest reachable"):
        plan(MODEL, solver="euler", schedule="edm", nfe=missing, cost=twice_above_one)
    near = plan(MODEL, solver="euler", schedule="edm", nfe=missing, cost=twice_above_one, nfe_policy="floor")
    assert near.nfe == sum(near.costs) == missing - 1


def _reachable(nfe: int) -> bool:
    try:
        plan(MODEL, solver="euler", schedule="edm", nfe=nfe, cost=twice_above_one)
    except BudgetError:
        return False
    return True


def test_a_cost_below_one_is_refused():
    with pytest.raises(ConfigError, match="at least one network evaluation"):
        plan(MODEL, solver="euler", schedule="edm", steps=4, cost=lambda s: 0)


@pytest.mark.parametrize("name", ["heun", "dpmpp-2m", "restart"])
def test_the_evaluator_counts_what_the_costed_plan_planned(name):
    """A test-local rule that calls the network twice where sigma > 1: counted == planned, per step too."""

    def rule(net, x, sigma):
        d = net(MAIN, x, sigma)
        return net(MAIN, x, sigma) if float(sigma[0]) > 1 else d

    p = plan(MODEL, solver=name, schedule="edm", nfe=31, nfe_policy="nearest", cost=twice_above_one)
    ev = Evaluator(MODEL, 2, combine=rule)
    seen: list[float] = []
    x0 = torch.randn(2, *MODEL.sample_shape, dtype=torch.float64) * p.sigma_first
    get_solver(name).fn(ev, x0, p.sigmas, noise=NoiseSource([0, 1]), callback=lambda s: seen.append(ev.nfe))
    assert ev.nfe == p.nfe == sum(p.costs)
    per_step = [b - a for a, b in zip([0.0, *seen[:-1]], seen, strict=True)]
    per_step[-1] += ev.nfe - seen[-1]
    assert per_step == list(p.costs)
