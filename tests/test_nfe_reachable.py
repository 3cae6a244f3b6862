"""Every solver at its first few reachable budgets under every endpoint convention: samples are drawn and
the evaluations counted by an independent counter equal the planned NFE.

tests/test_nfe.py covers budgets up to 11; here each solver's own first reachable budgets are searched for
(restart's lie above its restart overhead) and a run is required to happen for each.
"""

from __future__ import annotations

import pytest
import torch
from test_nfe import CONVENTIONS, Counting  # the independent row counter and the three conventions

import diffbench
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.solvers import all_solvers, get_solver

FIRST = 3  # budgets per solver and convention

# options that make each solver take its noisy path where it has one (noise must be drawn and counted too)
NOISY = {"euler": {"S_churn": 10.0}, "heun": {"S_churn": 10.0}, "ddim": {"eta": 1.0}}


def first_budgets(name: str, endpoint: str, dtz: bool, options: dict) -> list[int]:
    info = get_solver(name)
    found = [n for n in range(1, 80) if info.steps_for(n, endpoint=endpoint, denoise_to_zero=dtz, options=options)]
    return found[:FIRST]


CASES = [(s.name, e, z) for s in all_solvers() for e, z in CONVENTIONS]
IDS = [f"{s}-{e}{'-dtz' if z else ''}" for s, e, z in CASES]


@pytest.mark.parametrize("solver,endpoint,dtz", CASES, ids=IDS)
def test_first_reachable_budgets_sample_and_count(solver, endpoint, dtz):
    options = NOISY.get(solver, {})
    budgets = first_budgets(solver, endpoint, dtz, options)
    assert len(budgets) == FIRST, f"{solver} has fewer than {FIRST} budgets below 80"
    for nfe in budgets:
        model = Counting()
        out = diffbench.sample(
            model,
            seeds=[0, 1, 2],
            solver=solver,
            nfe=nfe,
            endpoint=endpoint,
            denoise_to_zero=dtz,
            device="cpu",
            **options,
        )
        assert out.nfe == nfe == out.plan.nfe
        assert model.rows == 3 * nfe, (solver, endpoint, dtz, nfe, model.rows / 3)
        # samples were drawn: finite, and moved away from x_0 = latents * sigma_0
        x0 = NoiseSource([0, 1, 2]).latents((2,)).double() * float(out.sigmas[0])
        assert out.images.shape == (3, 2) and torch.isfinite(out.images).all()
        assert (out.images - x0).abs().min() > 1e-3
