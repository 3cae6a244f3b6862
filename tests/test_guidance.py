"""Guidance (issue 21): D = D_ref + w (D_main - D_ref) in EDM2's convention, budgets met exactly under its costs
(2 per guided evaluation, 1 elsewhere), counted per network; the interval LO < sigma <= HI; the metrics of
guided sampling against a direct computation; bad input refused with one line through the real command."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import diffbench
from diffbench.denoiser import Evaluator
from diffbench.errors import BudgetError, ConfigError
from diffbench.models.analytic import load_builtin
from diffbench.sampling.guidance import Guidance, parse_interval
from diffbench.sampling.run import Sampler
from diffbench.sampling.spec import SamplerSpec

COND = "gmm:components=3,shape=1x4x4,seed=2,cond=1"


@pytest.fixture(scope="module")
def cond():
    return load_builtin(COND)


@pytest.mark.parametrize(
    ("solver", "nfe", "interval"),
    [
        ("heun", 18, None),
        ("euler", 12, None),
        ("dpmpp-2m", 16, None),
        ("heun", 17, "0.3,2"),
        ("euler", 14, "0.5,10"),
        ("dpmpp-2m", 13, "1,80"),
    ],
)
def test_counted_nfe_equals_the_planned_budget_per_network_under_guidance_costs(cond, solver, nfe, interval):
    spec = SamplerSpec.make(solver=solver, nfe=nfe, guidance=2.0, guidance_interval=interval)
    sampler = Sampler(cond, spec, device="cpu")
    batch = sampler.run([0, 1, 2], class_labels=torch.tensor([0, 1, 2]))
    assert sampler.plan.nfe == nfe == sum(sampler.plan.costs)
    assert batch.counts == sampler.counts
    assert sum(batch.counts.values()) == nfe
    g = sampler.guidance
    guided = sum(1 for s in _evaluation_sigmas(cond, sampler) if g.inside(s))
    assert batch.counts["null"] == guided and batch.counts["main"] == nfe - guided


def _evaluation_sigmas(model, sampler):
    from diffbench.sampling.noise import NoiseSource
    from diffbench.sampling.plan import _Rehearsal

    stand_in = _Rehearsal(model)
    sampler.info.fn(stand_in, torch.zeros(1, 1, dtype=torch.float64), sampler.plan.sigmas, noise=NoiseSource([0]))
    return stand_in.sigmas


def test_steps_fixes_the_step_count_and_the_counted_nfe_doubles_under_guidance_everywhere(cond):
    plain = Sampler(cond, SamplerSpec.make(solver="heun", steps=6), device="cpu")
    guided = Sampler(cond, SamplerSpec.make(solver="heun", steps=6, guidance=3.0), device="cpu")
    assert guided.plan.steps == plain.plan.steps == 6
    assert guided.plan.nfe == 2 * plain.plan.nfe == 22
    assert torch.equal(guided.plan.sigmas, plain.plan.sigmas)


def test_the_guided_denoiser_is_d_ref_plus_w_times_the_difference(cond):
    g = Guidance(weight=2.5)
    labels = torch.tensor([0, 2, 1, 1])
    ev = Evaluator({"main": cond, "null": cond}, 4, class_labels=labels, combine=g.combine)
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((4,), 1.7, dtype=torch.float64)
    d_cond = cond(x, sigma, torch.eye(3, dtype=torch.float64)[labels]).to(torch.float64)
    d_null = cond(x, sigma, None).to(torch.float64)
    torch.testing.assert_close(ev(x, 1.7), d_null + 2.5 * (d_cond - d_null), rtol=1e-12, atol=1e-12)
    assert ev.counts == {"main": 1.0, "null": 1.0}


def test_a_guiding_model_gets_the_same_label_when_it_is_conditional(cond):
    other = load_builtin("gmm:components=3,shape=1x4x4,seed=5,cond=1")
    g = Guidance(weight=2.0, guide="other")
    labels = torch.tensor([2, 0])
    ev = Evaluator({"main": cond, "guide": other}, 2, class_labels=labels, combine=g.combine)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sigma = torch.full((2,), 0.9, dtype=torch.float64)
    one_hot = torch.eye(3, dtype=torch.float64)[labels]
    d_main, d_ref = cond(x, sigma, one_hot).double(), other(x, sigma, one_hot).double()
    torch.testing.assert_close(ev(x, 0.9), d_ref + 2.0 * (d_main - d_ref), rtol=1e-12, atol=1e-12)
    assert ev.counts == {"main": 1.0, "guide": 1.0}


def test_guidance_one_equals_no_guidance_bit_for_bit(cond):
    kw = dict(seeds=range(6), class_labels=[0, 1, 2, 0, 1, 2], solver="heun", nfe=9, device="cpu")
    a = diffbench.sample(cond, **kw)
    b = diffbench.sample(cond, guidance=1.0, **kw)
    assert torch.equal(a.images, b.images)
    assert b.nfe == 9 and b.provenance["nfe_per_network"] == {"main": 9.0}


def test_the_interval_is_open_below_and_closed_above():
    g = Guidance(weight=2.0, lo=0.5, hi=2.0)
    assert not g.inside(0.5) and g.inside(math.nextafter(0.5, 1)) and g.inside(2.0)
    assert not g.inside(math.nextafter(2.0, 3))
    assert [g.cost(s) for s in (0.5, 1.0, 2.0, 2.5)] == [1, 2, 2, 1]
    assert Guidance(weight=1.0).cost(1.0) == 1


def test_an_evaluation_at_the_interval_edge_runs_the_main_network_alone(cond):
    g = Guidance(weight=3.0, lo=1.0, hi=2.0)
    ev = Evaluator({"main": cond, "null": cond}, 2, class_labels=torch.tensor([0, 1]), combine=g.combine)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    ev(x, 1.0)
    assert ev.counts == {"main": 1.0, "null": 0.0}
    ev(x, 2.0)
    assert ev.counts == {"main": 2.0, "null": 1.0}


def test_guided_samples_do_not_depend_on_the_batch_size(cond):
    kw = dict(seeds=range(7), solver="dpmpp-2m", nfe=11, guidance=2.0, guidance_interval="0.2,5", device="cpu")
    a = diffbench.sample(cond, batch=7, **kw)
    b = diffbench.sample(cond, batch=3, **kw)
    assert torch.equal(a.images, b.images)


def test_an_unreachable_budget_names_the_nearest_and_nearest_policy_takes_one(cond):
    with pytest.raises(BudgetError, match="nearest reachable: 14 or 18"):
        Sampler(cond, SamplerSpec.make(solver="heun", nfe=17, guidance=2.0), device="cpu")
    s = Sampler(cond, SamplerSpec.make(solver="heun", nfe=17, guidance=2.0, nfe_policy="nearest"), device="cpu")
    assert s.plan.nfe == 18 and s.plan.requested_nfe == 17


def test_interval_parsing():
    assert parse_interval("0.28,5.42") == (0.28, 5.42) == parse_interval("0.28:5.42")
    for bad in ("2,1", "1,1", "-1,2", "x,2", "1"):
        with pytest.raises(ConfigError):
            parse_interval(bad)


def test_the_guiding_models_sha256_enters_the_cell_identity():
    from diffbench.sweep.bench import prepare
    from diffbench.sweep.identity import cell_identity

    bench = prepare(COND, seeds=range(4), metrics=["sw"], device="cpu")
    ids = {}
    for guide in ("null", "gmm:components=3,shape=1x4x4,seed=5,cond=1", "gmm:components=3,shape=1x4x4,seed=6"):
        spec = SamplerSpec.make(solver="euler", nfe=8, guidance=2.0, guide=guide)
        ids[guide], ident = cell_identity(bench, spec, None)
        assert ("guide" in ident["files_read"]) == (guide != "null")
    assert len(set(ids.values())) == 3


# ---- metrics ---------------------------------------------------------------------------------------------


def test_class_accuracy_and_inv_prob_match_a_direct_computation_over_batches_and_blocks():
    from diffbench.io import quantize
    from diffbench.metrics.class_prob import accuracy_and_inverse_prob
    from diffbench.metrics.classifier import digits_classifier, images_to_input
    from diffbench.metrics.registry import Batch, MetricContext, Scoring

    data = __import__("numpy").load(
        __import__("diffbench.models.builtin", fromlist=["x"]).__path__[0] + "/digits-data.npz"
    )
    key = [k for k in data.files if data[k].ndim == 4][0]
    images = torch.as_tensor(data[key][:40]).float()
    images = images / images.max() * 2 - 1 if images.max() > 1 else images
    gen = torch.Generator().manual_seed(0)
    images = (images + 0.6 * torch.randn(images.shape, generator=gen)).clamp(-1, 1).reshape(40, 1, 8, 8)
    labels = torch.randint(0, 10, (40,), generator=gen)
    net = copy.deepcopy(digits_classifier("cpu").net).double().eval()
    with torch.no_grad():
        logits = net(images_to_input(quantize(images)).double())[1]
    acc, inv = accuracy_and_inverse_prob(logits, labels)
    p = torch.softmax(logits.double(), 1)[torch.arange(40), labels]
    ctx = MetricContext(block_size=20, n_all=40)
    scoring = Scoring(["class-accuracy", "inv-prob"], ctx, blocks=2)
    for b, (lo, hi) in enumerate(((0, 20), (20, 40))):
        for start in range(lo, hi, 7):
            stop = min(start + 7, hi)
            scoring.consume(b, Batch(images=images[start:stop], labels=labels[start:stop]))
    out = scoring.finish()
    assert out["class-accuracy"]["all"] == pytest.approx(acc, abs=1e-12)
    assert out["inv-prob"]["all"] == pytest.approx(inv, rel=1e-10)
    assert inv == pytest.approx(float((1 / p).mean()), rel=1e-10)
    q = torch.quantile(1 / p, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
    assert [out["inv-prob"][k] for k in ("q50", "q90", "q99")] == pytest.approx(q.tolist(), rel=1e-10)
    assert out["inv-prob"]["clipping"] == "none"
    assert out["inv-prob"]["blocks"][0] == pytest.approx(float((1 / p[:20]).mean()), rel=1e-10)


# ---- bad input through the real command ------------------------------------------------------------------


def _one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1, (code, err)
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["digits-edm", "--guidance", "2"], "the model is unconditional"),
        (["digits-edm-cond", "--guidance", "2", "--guide", "gmm:shape=1x16x16,cond=1"], "shape"),
        (["digits-edm-cond", "--guidance", "2", "--guide", "gmm:shape=3x8x8"], "shape"),
        (["digits-edm-cond", "--guidance", "2", "--guide", "gmm:shape=1x8x8,cond=1"], "has 3 classes"),
        (["digits-edm-cond", "--guidance", "2", "--guidance-interval", "3,1"], "LO < HI"),
        (["digits-edm-cond", "--guidance", "2", "--guidance-interval", "1,200"], "outside the sigma range"),
        (["digits-edm-cond", "--guidance", "2", "--guidance-interval", "0,0.001"], "outside the sigma range"),
        (["digits-edm-cond", "--guidance", "2", "--nfe", "17"], "nearest reachable: 14 or 18"),
        (["digits-edm-cond", "--guide", "null"], "--guide applies only with guidance"),
        (["digits-edm-cond", "--guidance-interval", "0.1,1"], "--guidance-interval applies only with guidance"),
        (["digits-edm-cond", "--guide", "null", "--guidance-interval", "0.1,1"], "--guidance-interval apply only"),
    ],
)
def test_bad_guidance_input_is_one_line_and_a_nonzero_exit(cli, tmp_path, args, expected):
    nfe = [] if "--nfe" in args else ["--nfe", "18"]
    code, _, err = cli("sample", *args, *nfe, "--seeds", "0-1", "--out", tmp_path / "o", "--device", "cpu")
    assert expected in _one_line_error(code, err)
    assert not (tmp_path / "o").exists()


def test_the_sample_header_says_guidance_is_on(cli, tmp_path):
    """The header line names the weight, the reference and the interval (the unguided header is unchanged)."""
    code, _, err = cli(
        "sample", "digits-edm-cond", "--solver", "dpmpp-2m", "--guidance", "2", "--guidance-interval", "0.5,10",
        "--class", "1", "--nfe", "18", "--seeds", "0-1", "--out", tmp_path / "o.npz", "--device", "cpu",
    )  # fmt: skip
    assert code == 0 and "NFE 18 per sample, guidance 2 (null) on sigma (0.5, 10], sigma 80 -> " in err, err
    code, _, err = cli("sample", "digits-edm-cond", "--nfe", "5", "--seeds", "0", "--out", tmp_path / "p.npz")
    assert code == 0 and "NFE 5 per sample, sigma 80 -> " in err and "guidance" not in err, err


def test_the_metrics_refuse_an_unconditional_model_with_one_line(cli, tmp_path):
    code, _, err = cli(
        "sweep", "digits-edm", "--nfe", "5", "--metric", "inv-prob", "--seeds", "0-9", "--store", tmp_path / "s.db"
    )
    assert "unconditional" in _one_line_error(code, err)


def test_a_sweep_over_guidance_skips_an_unreachable_budget_and_runs_the_rest(cli, tmp_path):
    code, out, err = cli(
        "sweep", "digits-edm-cond", "--solver", "heun", "--guidance", "1,2", "--nfe", "9,18",
        "--metric", "class-accuracy,inv-prob", "--seeds", "0-19", "--store", tmp_path / "s.db",
        "--device", "cpu", "--out", tmp_path / "out", "--no-plot",
    )  # fmt: skip
    assert code == 0, err
    assert "2 skipped" in out or "skipped" in out
    import json

    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    text = json.dumps(rows)
    assert "nfe_per_network" in text and '"null": 9.0' in text


def test_solvers_json_states_the_nfe_convention_under_guidance(cli):
    import json

    code, out, _ = cli("solvers", "--json")
    rows = json.loads(out)
    assert code == 0 and all("costs 2 network evaluations" in r["nfe_under_guidance"] for r in rows)


def test_the_interval_is_a_sweep_axis_written_lo_colon_hi(cli, tmp_path):
    args = ["sweep", COND, "--solver", "euler", "--guidance", "2", "--nfe", "8,9", "--metric", "sw"]
    args += ["--seeds", "0-7", "--device", "cpu"]
    code, out, err = cli(*args, "--guidance-interval", "0.3:5,0:1", "--store", tmp_path / "a.db")
    assert code == 0, err
    assert "guidance-interval=0.3:5" in out and "guidance-interval=0:1" in out
    # one LO,HI (no ':', two numbers) is one interval, as `sample` takes it; a list of them needs LO:HI
    code, _, err = cli(*args, "--guidance-interval", "0.3,5", "--store", tmp_path / "b.db")
    assert code == 0 and "error" not in err, err
    code, _, err = cli(*args, "--guidance-interval", "0.3,5,0,1", "--store", tmp_path / "c.db")
    assert "in a sweep list write LO:HI" in _one_line_error(code, err)


def test_the_metrics_refuse_a_model_the_digits_classifier_cannot_read(cli, tmp_path):
    code, _, err = cli(
        "sweep", COND, "--nfe", "5", "--metric", "class-accuracy", "--seeds", "0-9", "--store", tmp_path / "s.db"
    )
    assert "digits classifier" in _one_line_error(code, err)
