"""The solver registry's entries: what `diffbench solvers` shows is derived from each entry correctly."""

from __future__ import annotations

import pytest

from diffbench.sampling.solvers import SOLVERS, SolverInfo, all_solvers, get_solver, order_at, register_solver


def test_describe_fields():
    import math

    for info in all_solvers():
        d = info.describe()
        assert {k: d[k] for k in ("name", "method_order", "stochastic", "nfe_rule", "churn", "paper")} == {
            "name": info.name,
            "method_order": info.order,
            "stochastic": info.stochastic,
            "nfe_rule": info.nfe_rule,
            "churn": info.churn,
            "paper": info.paper,
        }
        assert d["orders"] == (list(info.orders) if info.orders else [info.order])
        assert d["options"] == list(info.options)
        assert d["order"] == d["convergence_order"] == info.convergence_order()
        assert {f"order={o}" for o in info.orders} <= set(d["convergence_orders"])
        for o in info.orders:
            assert d["convergence_orders"][f"order={o}"] == info.convergence_order({"order": o})
        assert d["defaults"] == {k: ("inf" if v == math.inf else v) for k, v in info.defaults().items()}
    assert get_solver("unipc").describe()["orders"] == [1, 2, 3]


def test_nfe_rule_text():
    assert get_solver("heun").nfe_rule == "2 per step, 1 on a final step to 0"
    assert get_solver("euler").nfe_rule == "1 per step"
    assert get_solver("dpm-solver-3").nfe_rule == "3 per step, 1 on a final step to 0"


def test_a_duplicate_solver_is_refused():
    before = dict(SOLVERS)
    with pytest.raises(ValueError, match="solver 'euler' is already registered"):
        register_solver(SolverInfo("euler", lambda *a, **k: None, 1, False, "x"))
    assert SOLVERS == before


@pytest.mark.parametrize(
    "j,n,order,lof,history,want",
    [
        (0, 10, 3, "always", 0, 1),
        (1, 10, 3, "always", 0, 2),
        (2, 10, 3, "always", 0, 3),
        (8, 10, 3, "always", 0, 2),
        (9, 10, 3, "always", 0, 1),
        (9, 10, 3, "never", 0, 3),
        (9, 10, 3, 10, 0, 3),  # only below N = 10 steps
        (9, 10, 3, 11, 0, 1),
        (0, 10, 3, "never", 2, 3),  # history counts as warm-up
        (0, 10, 3, "never", 1, 2),
    ],
)
def test_order_at(j, n, order, lof, history, want):
    assert order_at(j, n, order, lof, history=history) == want
