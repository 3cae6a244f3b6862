"""The per-step report every solver gives (`callback(StepInfo)`), checked against the run it describes.

`Sampler.run` builds its non-finite check (whose message names the step and its sigmas) and the public
`on_step` hook on this report, so each field is part of the interface (solvers/__init__.py): one report per
grid interval, in order, with i, n, the interval's two sigmas, the state after the step, and a denoised
output the network produced during that step. The checks below hold for every registered solver, on the
grid the planner would give, with a zero-length step inside (round_sigma of a discrete model), and with
the stochastic options switched on.
"""

from __future__ import annotations

import pytest
import torch

import diffbench
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.schedules import edm_grid
from diffbench.sampling.solvers import StepInfo, all_solvers, get_solver

MODEL = diffbench.load("gmm:shape=2x3x3")
SHAPE = tuple(MODEL.sample_shape)
STEPS = 14  # long enough for restart's default t_min/t_max and every multistep warm-up
STOCHASTIC = {  # options that make each stochastic path draw noise
    "euler": {"S_churn": 10.0},
    "heun": {"S_churn": 10.0},
    "ddim": {"eta": 1.0},
    "euler-ancestral": {"eta": 1.0},
    "dpmpp-2m-sde": {"eta": 1.0},
    "restart": {"restart_gamma": 0.05},
}


class Recorder:
    """D(x; sigma) of the mixture, keeping every (input, output) pair in call order."""

    def __init__(self):
        self.calls: list[tuple[torch.Tensor, float, torch.Tensor]] = []
        self.start: torch.Tensor | None = None  # the state the run began from (set by run())

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = float(sigma)
        out = MODEL(x, torch.full((x.shape[0],), s, dtype=torch.float64))
        self.calls.append((x.clone(), s, out.clone()))
        return out


def grid(zero_at: int | None = None, final_zero: bool = True) -> torch.Tensor:
    """EDM's grid of STEPS sigmas (and a final 0); zero_at=k repeats sigma_k, so step k has length 0, as
    round_sigma of a discrete model can make it (k < 0 counts from the end of the positive sigmas)."""
    g = edm_grid(STEPS, 0.002, 80.0)
    if zero_at is not None:
        k = zero_at % len(g)
        g = torch.cat([g[: k + 1], g[k : k + 1], g[k + 1 :]])
    return torch.cat([g, g.new_zeros(1)]) if final_zero else g


def run(name: str, sigmas: torch.Tensor, **options):
    info = get_solver(name)
    rec, reports, calls_at = Recorder(), [], []

    def callback(step: StepInfo) -> None:
        reports.append(step)
        calls_at.append(len(rec.calls))  # the denoiser calls made up to this report

    x0 = NoiseSource([5, 9]).latents(SHAPE).double() * float(sigmas[0])
    noise = NoiseSource([5, 9])
    noise.latents(SHAPE)
    rec.start = x0
    out = info.fn(rec, x0, sigmas, noise=noise, callback=callback, **options)
    return out, reports, calls_at, rec


AFS = [(s.name, {"analytic_first_step": True}) for s in all_solvers() if "analytic_first_step" in s.options]
OTHERS = [("unipc", {"prediction": "noise"}), ("unipc", {"variant": "bh1"}), ("dpmpp-3m", {"variant": "taylor"})]
CASES = [(s.name, {}) for s in all_solvers()] + [(k, v) for k, v in STOCHASTIC.items()] + AFS + OTHERS


GRIDS = {  # (zero-length step at, final 0)
    "grid": (None, True),
    "zero-length-step": (6, True),
    "zero-length-second-to-last": (-2, True),
    "sigma-min-end": (None, False),
    "zero-length-last": (-1, False),
    "zero-length-before-final": (-1, True),
    "zero-length-early": (1, True),  # during the multistep warm-up: the history is shorter than the step index
}


@pytest.mark.parametrize("grid_kind", list(GRIDS))
@pytest.mark.parametrize("name,options", CASES, ids=[n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in CASES])
def test_one_report_per_interval_with_its_sigmas_state_and_denoised(name, options, grid_kind):
    sigmas = grid(*GRIDS[grid_kind])
    n = len(sigmas) - 1
    out, reports, calls_at, rec = run(name, sigmas, **options)
    assert [r.i for r in reports] == list(range(n))
    assert all(r.n == n for r in reports)
    assert [r.sigma for r in reports] == [float(s) for s in sigmas[:-1]]
    assert [r.sigma_next for r in reports] == [float(s) for s in sigmas[1:]]
    assert all(isinstance(r.sigma, float) and isinstance(r.sigma_next, float) for r in reports)
    assert torch.equal(reports[-1].x, out), "the last report's state is the result"
    if float(sigmas[-1]) == 0:  # the step to sigma = 0 is x = D(x; sigma_last) (`diffbench solvers --json`)
        x_eval, _, d_eval = rec.calls[-1]
        want = d_eval
        if name == "unipc" and options.get("prediction") == "noise":
            # x - sigma eps with eps = (x_pred - D)/sigma from UniC's evaluation at the predicted point: the
            # sigma' -> 0 limit of UniP-1 in noise prediction, x' = x - (sigma - sigma') eps
            want = reports[-2].x - (x_eval - d_eval)
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    # every planned evaluation is spent, a zero-length step's too (the plan counts it)
    endpoint = "edm" if float(sigmas[-1]) == 0 else "sigma_min"
    # n intervals either way: edm is n - 1 steps to sigma > 0 and one to 0, sigma_min n steps to sigma > 0
    assert len(rec.calls) == get_solver(name).nfe(n, endpoint=endpoint, options=options)
    previous = 0
    for r, upto in zip(reports, calls_at):
        assert r.x.shape == out.shape and r.denoised.shape == out.shape
        made = [d for _, _, d in rec.calls[previous:upto]]
        if made:  # a step that evaluated the network reports one of its outputs
            assert any(torch.equal(r.denoised, d) for d in made), f"step {r.i}: denoised is not this step's output"
        elif options.get("analytic_first_step") and r.i == 0:
            # AFS: eps = x / sqrt(1 + sigma^2), the exact score of unit-variance data, so D = x - sigma eps
            x0, s0 = rec.start, float(sigmas[0])
            torch.testing.assert_close(r.denoised, x0 - s0 * x0 / (1 + s0 * s0) ** 0.5, rtol=1e-14, atol=1e-14)
        else:  # a step that reuses an earlier evaluation (e.g. FSAL) reports an output the network made
            assert any(torch.equal(r.denoised, d) for _, _, d in rec.calls[:upto]), f"step {r.i}"
        previous = upto


@pytest.mark.parametrize("name", [s.name for s in all_solvers()])
def test_each_report_is_the_state_the_next_step_starts_from(name):
    """Without churn, the state reported after step i is where step i+1 first evaluates D, at sigma_{i+1}
    (restart: except after its restart point, where the next evaluation is of the re-noised state; UniPC:
    its corrector's evaluation at sigma_{i+1} belongs to step i, and the report is the corrected state)."""
    out, reports, calls_at, rec = run(name, grid())
    skipped = []
    for r, upto in zip(reports[:-1], calls_at[:-1]):
        if name == "unipc":  # UniC evaluates D at the predicted state inside step i; the report is the corrected x
            x_pred, s_pred, _ = rec.calls[upto - 1]
            assert s_pred == r.sigma_next and not torch.equal(x_pred, r.x), f"step {r.i}: no corrector evaluation"
            continue
        x_next, s_next, _ = rec.calls[upto]
        if name == "restart" and s_next != r.sigma_next:
            skipped.append(r.i)
            continue
        assert s_next == r.sigma_next, f"step {r.i + 1} first evaluates at sigma {s_next}, not {r.sigma_next}"
        assert torch.equal(x_next, r.x), f"step {r.i}: the next step does not start from the reported x"
    assert len(skipped) <= 1


class Spy(NoiseSource):
    """A noise source that records which increments a solver asks for."""

    def __init__(self, seeds):
        super().__init__(seeds)
        self.asked: list[tuple[int, float, float]] = []

    def increment(self, i, sigma, sigma_next, like):
        self.asked.append((i, float(sigma), float(sigma_next)))
        return super().increment(i, sigma, sigma_next, like)


@pytest.mark.parametrize("name", ["euler-ancestral", "ddim", "dpmpp-2m-sde", "euler", "heun"])
def test_each_stochastic_step_asks_for_the_increment_of_its_own_interval(name):
    """Brownian noise (`--noise brownian`) answers with W(sigma_next) - W(sigma): the interval must be the step's
    (EDM churn too: its noise is drawn on the interval of the step it perturbs, the step to 0 included)."""
    sigmas = grid()
    noise = Spy([5, 9])
    x = noise.latents(SHAPE).double() * float(sigmas[0])
    get_solver(name).fn(Recorder(), x, sigmas, noise=noise, **STOCHASTIC[name])
    churn = name in ("euler", "heun")
    stochastic_steps = [i for i in range(len(sigmas) - 1) if churn or float(sigmas[i + 1]) > 0]
    assert noise.asked == [(i, float(sigmas[i]), float(sigmas[i + 1])) for i in stochastic_steps]


@pytest.mark.parametrize("sigma_t,scaling", [("vp", "vp"), ("linear", "vp"), ("ve", "none")])
@pytest.mark.parametrize("name", ["euler", "heun"])
def test_reports_are_in_edm_space_on_any_ode_axes(name, sigma_t, scaling):
    """On EDM's general ODE (sigma(t), s(t)) the solver's state is s(t) x; its reports are x itself, the input
    its next evaluation of D takes (Karras et al. 2022, Alg. 1: D(x_i / s(t_i); sigma(t_i)))."""
    from diffbench.sampling.ode import TimeParam

    sigmas = grid()
    ode = TimeParam.make(sigma_t, scaling, sigma_min=0.002, sigma_max=80.0)
    out, reports, calls_at, rec = run(name, sigmas, ode=ode)
    assert torch.equal(reports[-1].x, out)
    for r, upto in zip(reports[:-1], calls_at[:-1]):
        x_next, s_next, _ = rec.calls[upto]
        assert s_next == pytest.approx(r.sigma_next, rel=1e-12)
        torch.testing.assert_close(x_next, r.x, rtol=1e-12, atol=1e-12)
