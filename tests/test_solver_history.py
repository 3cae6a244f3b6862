"""Multistep solvers started from a given history (the `history` option: (sigma, x, D) of earlier points,
oldest first) continue the run exactly: a run split at step k, its second half given the first half's
last points, ends where the whole run ends. The order tests seed the history from the exact trajectory
through this option (tests/test_solvers_fast.py), so it must mean what it says.

`lower_order_final="never"`: the warm-up then depends only on the step index and the history's length
(order_at), not on how many steps remain, so the split is exact to float64 rounding.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from test_solver_callbacks import Recorder  # D of the same mixture, recording (x, sigma, D) per call

import diffbench
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.schedules import edm_grid
from diffbench.sampling.solvers import all_solvers, get_solver

MODEL = diffbench.load("gmm:shape=2x3x3")
SHAPE = tuple(MODEL.sample_shape)
WITH_HISTORY = [s.name for s in all_solvers() if "history" in inspect.signature(s.fn).parameters]
# UniPC's step k starts from the model output at its predicted point (UniC's evaluation), which a history of
# (sigma, x, D) cannot carry: a restarted half evaluates at the corrected state instead, so its split is not
# exact by construction; its history is checked by test_unipc_history_enters_as_its_model_output_... below
SPLIT_EXACT = [n for n in WITH_HISTORY if n != "unipc"]


def test_the_multistep_solvers_take_a_history():
    assert set(WITH_HISTORY) == {
        "dpmpp-2m", "dpmpp-3m", "dpm-solver-3m", "dpmpp-2m-sde", "unipc", "ipndm", "deis", "lms",
    }  # fmt: skip


CASES = [(n, {}) for n in SPLIT_EXACT] + [("dpmpp-3m", {"variant": "taylor"}), ("dpm-solver-3m", {"variant": "taylor"})]


@pytest.mark.parametrize("split", [1, 2, 5])
@pytest.mark.parametrize("name,extra", CASES, ids=[n + "".join(f"-{v}" for v in o.values()) for n, o in CASES])
def test_a_run_split_with_its_history_ends_where_the_whole_run_ends(name, extra, split):
    info = get_solver(name)
    sigmas = torch.cat([edm_grid(12, 0.002, 80.0), torch.zeros(1, dtype=torch.float64)])
    opts = {"lower_order_final": "never", **extra}
    if info.stochastic:
        opts["eta"] = 0.0  # the deterministic member: the history alone carries the state
    x0 = NoiseSource([2, 7]).latents(SHAPE).double() * 80

    whole_rec, states = Recorder(), {}
    whole = info.fn(whole_rec, x0, sigmas, noise=None, callback=lambda r: states.__setitem__(r.i, r.x), **opts)

    # the points before the split, as the whole run evaluated them: (sigma_j, x at that evaluation, D)
    first_eval = {}
    for x, s, d in whole_rec.calls:
        first_eval.setdefault(s, (s, x, d))
    history = [first_eval[float(sigmas[j])] for j in range(split)]  # all of them: the solver keeps what it needs
    rest = info.fn(Recorder(), states[split - 1], sigmas[split:], noise=None, history=history, **opts)
    cold = info.fn(Recorder(), states[split - 1], sigmas[split:], noise=None, **opts)
    torch.testing.assert_close(rest, whole, rtol=1e-12, atol=1e-12)
    # and without the history the second half is a different (cold-started) run
    assert not torch.allclose(cold, whole, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("prediction", ["data", "noise"])
def test_unipc_history_enters_as_its_model_output_and_counts_as_warm_up(prediction):
    """UniPC's history is (sigma, x, D) turned into its model output: D (data prediction) or
    eps = (x - D)/sigma (noise prediction, Zhao et al. 2023). Two histories with the same model output give the
    same run; a one-point history makes the first step second order (a different run from a cold start)."""
    info = get_solver("unipc")
    sigmas = torch.cat([edm_grid(8, 0.002, 80.0), torch.zeros(1, dtype=torch.float64)])
    opts = {"order": 2, "lower_order_final": "never", "prediction": prediction}
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, *SHAPE, dtype=torch.float64, generator=gen) * 80
    x_h = torch.randn(2, *SHAPE, dtype=torch.float64, generator=gen) * 90
    d_h = MODEL(x_h, torch.full((2,), 90.0, dtype=torch.float64))
    shift = torch.full_like(x_h, 3.0)
    same = (x_h + shift, d_h + shift) if prediction == "noise" else (x_h + shift, d_h)  # same eps / same D
    a = info.fn(Recorder(), x, sigmas, noise=None, history=[(90.0, x_h, d_h)], **opts)
    b = info.fn(Recorder(), x, sigmas, noise=None, history=[(90.0, *same)], **opts)
    cold = info.fn(Recorder(), x, sigmas, noise=None, **opts)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(a, cold, rtol=1e-9, atol=1e-9)
    other = (x_h, d_h + shift)  # a different model output (D and eps both change)
    assert not torch.allclose(a, info.fn(Recorder(), x, sigmas, noise=None, history=[(90.0, *other)], **opts))
