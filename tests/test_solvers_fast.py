"""The fast-solver family on the analytic mixture: measured convergence orders, agreement at high budget,
exact NFE with their options, Brownian-path noise, and bad options."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import diffbench
from diffbench.errors import BudgetError, DiffbenchError
from diffbench.models.analytic import reference_solution
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.schedules import edm_grid, linear_grid
from diffbench.sampling.solvers import all_solvers, get_solver

MULTISTEP = {"dpmpp-2m", "dpmpp-3m", "dpm-solver-3m", "unipc", "ipndm", "deis", "lms"}
MODEL = diffbench.load("gmm")
Z = NoiseSource(range(2)).latents(MODEL.sample_shape).double()


class Exact:
    """D as a plain callable D(x, sigma) over the mixture, as the runner's counting wrapper presents it."""

    def __call__(self, x, sigma):
        return MODEL(x, torch.full((x.shape[0],), float(sigma), dtype=torch.float64))


@functools.cache
def exact_state(sigma_from: float, sigma: float) -> torch.Tensor:
    x0 = Z * sigma_from
    return x0 if sigma == sigma_from else reference_solution(MODEL, x0, sigma_from=sigma_from, sigma_to=sigma)


def error(name: str, grid: torch.Tensor, *, exact_start: bool, **kw) -> float:
    """RMS distance at grid[-1] to the reference; multistep history seeded from the exact trajectory."""
    info = get_solver(name)
    top = float(grid[0])
    start, history = 0, []
    if name in MULTISTEP:
        kw.setdefault("lower_order_final", "never" if exact_start else "always")
        if exact_start:
            start = kw.get("order", info.order) - 1 if name != "dpmpp-2m" else 1
            for k in range(start):
                xk = exact_state(top, float(grid[k]))
                history.append((float(grid[k]), xk, Exact()(xk, grid[k])))
            kw["history"] = history
    x = exact_state(top, float(grid[start]))
    out = info.fn(Exact(), x, grid[start:], noise=None, **kw)
    return float(((out - exact_state(top, float(grid[-1]))) ** 2).mean().sqrt())


def slope(name, steps, *, grid_fn=lambda n: edm_grid(n + 1, 0.002, 80.0), exact_start=True, **kw):
    errs = [error(name, grid_fn(n), exact_start=exact_start, **kw) for n in steps]
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0], errs


# (solver, options, step counts in its asymptotic range): every deterministic solver and variant, measured
# on EDM's rho = 7 grid against the order the registry declares (`diffbench solvers`)
ORDERS = [
    pytest.param("euler", {}, [40, 80, 160], marks=pytest.mark.slow),  # also tests/test_solvers_core.py
    ("heun", {}, [20, 40, 80]),
    pytest.param("ddim", {}, [40, 80, 160], marks=pytest.mark.slow),
    ("dpm-solver-2", {}, [20, 40, 80]),
    ("dpm-solver-3", {}, [20, 40, 80]),
    ("dpmpp-2s", {}, [20, 40, 80]),
    ("dpmpp-2m", {}, [20, 40, 80]),
    ("dpmpp-3m", {}, [80, 160, 320]),
    ("dpmpp-3m", {"variant": "taylor"}, [40, 80, 160]),
    pytest.param("dpm-solver-3m", {}, [80, 160, 320], marks=pytest.mark.slow),
    pytest.param("dpm-solver-3m", {"variant": "taylor"}, [40, 80, 160], marks=pytest.mark.slow),
    ("unipc", {"order": 1}, [20, 40, 80]),
    ("unipc", {"order": 2}, [20, 40, 80]),
    ("unipc", {}, [20, 40, 80]),
    ("unipc", {"order": 3, "variant": "bh1"}, [20, 40, 80]),
    ("unipc", {"order": 2, "prediction": "noise"}, [20, 40, 80]),
    ("ipndm", {}, [80, 160, 320]),
    ("deis", {"order": 2}, [40, 80, 160]),
    ("deis", {}, [80, 160, 320]),
    ("lms", {"order": 3}, [80, 160, 320]),
    ("lms", {}, [80, 160, 320]),
]


def test_every_deterministic_solver_has_a_measured_order():
    measured = {(case.values if hasattr(case, "values") else case)[0] for case in ORDERS}
    assert measured == {s.name for s in all_solvers() if not s.stochastic}


@pytest.mark.parametrize("name,kw,steps", ORDERS, ids=lambda v: str(v) if not isinstance(v, list) else "")
def test_order_with_exact_history(name, kw, steps):
    """The measured order agrees with the declared one (SolverInfo.convergence_order) within 0.3."""
    s, errs = slope(name, steps, **kw)
    assert s == pytest.approx(get_solver(name).convergence_order(kw), abs=0.3), errs


@pytest.mark.parametrize("order,steps", [(2, [40, 80, 160]), (3, [40, 80, 160]), (4, [80, 160, 320])])
def test_ipndm_order_on_a_uniform_grid(order, steps):
    """iPNDM's fixed Adams-Bashforth coefficients assume equal steps: full order on a uniform sigma grid."""
    s, errs = slope("ipndm", steps, grid_fn=lambda n: linear_grid(n + 1, 1.0, 20.0), order=order)
    assert s == pytest.approx(order, abs=0.3), errs


@pytest.mark.parametrize(
    "name,kw", [("dpmpp-2m", {}), ("dpmpp-3m", {}), ("unipc", {}), ("ipndm", {}), ("deis", {}), ("lms", {})]
)
def test_order_with_the_usual_warm_up(name, kw):
    s, errs = slope(name, [40, 80, 160], exact_start=False, **kw)
    assert s >= 1.8, errs  # at least second order (the published 3M is 2 in all: 1.85 over these steps)


@pytest.mark.parametrize("name", [s.name for s in all_solvers() if not s.stochastic and s.order >= 2])
def test_high_budget_agrees_with_reference(name):
    ref = exact_state(80.0, 0.002)
    out = diffbench.sample(MODEL, latents=Z.float(), solver=name, steps=600, endpoint="sigma_min", device="cpu")
    rel = float(((out.images - ref) ** 2).mean().sqrt() / (ref**2).mean().sqrt())
    assert rel < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", [s.name for s in all_solvers() if not s.stochastic and s.order == 1])
def test_high_budget_agrees_with_reference_first_order(name):
    ref = exact_state(80.0, 0.002)
    out = diffbench.sample(MODEL, latents=Z.float(), solver=name, steps=20000, endpoint="sigma_min", device="cpu")
    assert float(((out.images - ref) ** 2).mean().sqrt() / (ref**2).mean().sqrt()) < 1e-4


def test_ten_nfe_ordering_matches_the_literature():
    """At NFE 10 the 3rd-order multistep solvers, on the grids their papers use, beat Euler on EDM's grid by
    a wide margin (REFERENCE §3: FID 3.0-4.1 against 15.7); here in RMS distance to the exact ODE solution."""
    z = NoiseSource(range(16)).latents(MODEL.sample_shape)
    ref = reference_solution(MODEL, z.double() * 80, sigma_from=80.0, sigma_to=0.002)

    def err(solver, schedule):
        out = diffbench.sample(
            MODEL, latents=z, solver=solver, schedule=schedule, nfe=10, endpoint="sigma_min", device="cpu"
        )
        return float(((out.images - ref) ** 2).mean().sqrt())

    euler = err("euler", "edm")
    for solver, schedule in (
        ("dpmpp-3m", "logsnr"),
        ("unipc", "logsnr"),
        ("deis", "time-quadratic"),
        ("ipndm", "edm"),
    ):
        assert err(solver, schedule) < euler / 2, solver


@pytest.mark.parametrize(
    "solver,options,nfe,steps",
    [
        ("dpmpp-3m", {"analytic_first_step": True}, 9, 10),
        ("unipc", {"analytic_first_step": True}, 5, 6),
        ("ipndm", {"analytic_first_step": True}, 4, 5),
        ("restart", {}, 3 + 8, 2),  # the paper's [3, 2, 0.06, 0.30]: K = 2 restarts of 2 Heun steps
        ("restart", {"restart_k": 1, "restart_n": 3}, 35 + 4, 18),
        ("dpm-solver-3", {}, 3 * 4 + 1, 5),
    ],
)
def test_exact_nfe_with_options(solver, options, nfe, steps):
    class Count:
        sigma_min, sigma_max, img_channels, img_resolution, label_dim = 0.0, float("inf"), 3, 8, 0
        rows = 0

        def round_sigma(self, s):
            return torch.as_tensor(s)

        def __call__(self, x, sigma, class_labels=None):
            Count.rows += x.shape[0]
            return MODEL(x, sigma)

    out = diffbench.sample(Count(), seeds=[0, 1], solver=solver, nfe=nfe, device="cpu", **options)
    assert out.nfe == nfe and out.plan.steps == steps and Count.rows == 2 * nfe


def test_unreachable_budgets_list_the_nearest():
    with pytest.raises(BudgetError, match="nearest reachable: 7 or 10"):
        diffbench.sample(MODEL, seeds=[0], solver="dpm-solver-3", nfe=8)
    with pytest.raises(BudgetError, match="too small for restart"):
        diffbench.sample(MODEL, seeds=[0], solver="restart", nfe=10)


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"solver": "unipc", "order": 4}, "unipc supports order 1, 2, 3"),
        ({"solver": "heun", "order": 2}, "do not apply to solver 'heun'"),
        ({"solver": "dpmpp-2m", "variant": "bh1"}, "do not apply to solver 'dpmpp-2m'"),
        ({"solver": "unipc", "variant": "bh3"}, "unknown unipc variant 'bh3'"),
        ({"solver": "lms", "lower_order_final": "sometimes"}, "lower_order_final must be"),
        ({"solver": "dpmpp-2m", "noise": "brownian"}, "applies to stochastic solvers"),
        ({"solver": "euler", "analytic_first_step": True}, "do not apply to solver 'euler'"),
    ],
)
def test_bad_options(kw, message):
    with pytest.raises(DiffbenchError, match=message):
        diffbench.sample(MODEL, seeds=[0], nfe=6, **kw)


@pytest.mark.parametrize(
    "solver,kw", [("euler-ancestral", {}), ("dpmpp-2m-sde", {}), ("heun", {"churn_per_step": 0.3})]
)
def test_brownian_noise_refines_one_path(solver, kw):
    """With a per-seed Brownian path, doubling the steps converges to one sample; fresh noise does not."""

    def gap(noise):
        a, b = (
            diffbench.sample(MODEL, seeds=[0, 1], solver=solver, steps=n, noise=noise, device="cpu", **kw).images
            for n in (64, 128)
        )
        return float(((a - b) ** 2).mean().sqrt())

    assert gap("brownian") < 0.3 * gap("independent")


def test_brownian_noise_is_batch_invariant():
    one = diffbench.sample(MODEL, seeds=[4, 5, 6], solver="dpmpp-2m-sde", nfe=8, noise="brownian", batch=1)
    three = diffbench.sample(MODEL, seeds=[4, 5, 6], solver="dpmpp-2m-sde", nfe=8, noise="brownian", batch=3)
    assert torch.equal(one.images, three.images)


def test_dpmpp_2m_sde_eta0_is_dpmpp_2m():
    a = diffbench.sample(MODEL, seeds=[0, 1], solver="dpmpp-2m-sde", eta=0.0, nfe=12, device="cpu")
    b = diffbench.sample(MODEL, seeds=[0, 1], solver="dpmpp-2m", nfe=12, device="cpu")
    assert torch.allclose(a.images, b.images, atol=1e-12)


def test_restart_with_no_restarts_is_heun():
    a = diffbench.sample(MODEL, seeds=[0, 1], solver="restart", restart_k=0, nfe=35, device="cpu")
    b = diffbench.sample(MODEL, seeds=[0, 1], solver="heun", nfe=35, device="cpu")
    assert torch.allclose(a.images, b.images, atol=1e-12)


def test_time_schedules():
    from diffbench.sampling.schedules import time_quadratic_grid, time_uniform_grid

    for fn in (time_uniform_grid, time_quadratic_grid):
        g = fn(10, 0.002, 80.0)
        assert g[0] == pytest.approx(80.0, rel=1e-10) and g[-1] == pytest.approx(0.002, rel=1e-8)
        assert (g[1:] < g[:-1]).all()


def test_registry_writes_down_the_conventions():
    """`diffbench solvers --json`: order that holds, per-variant orders, lower_order_final, last step, DEIS variant."""
    rows = {r["name"]: r for r in (s.describe() for s in all_solvers())}
    assert (
        rows["ipndm"]["order"] == 2 and rows["ipndm"]["method_order"] == 4 and "uniform" in rows["ipndm"]["order_note"]
    )
    assert rows["dpmpp-3m"]["convergence_orders"] == {"variant=published": 2, "variant=taylor": 3}
    assert (
        rows["deis"]["conventions"]["deis_variant"].startswith("tAB")
        and "19.9" in rows["deis"]["conventions"]["deis_variant"]
    )
    assert rows["unipc"]["lower_order_final"] == 15 and rows["lms"]["lower_order_final"] == "never"
    assert all("x = D(x; sigma_last)" in r["last_step"] for n, r in rows.items() if n != "unipc")
    assert "x = D there with prediction=data" in rows["unipc"]["last_step"]  # noise: tests/test_solver_callbacks.py
