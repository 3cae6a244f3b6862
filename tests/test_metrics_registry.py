"""The metric registry (diffbench.metrics.registry): validated registration, a new metric as one module plus
one registration, and the shared Scoring loop (checkpoint round trip, blocks and union)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffbench.metrics import registry
from diffbench.metrics.accumulators import SumsAcc
from diffbench.metrics.registry import (
    FEATURE_MOMENTS,
    Batch,
    Metric,
    MetricContext,
    Scoring,
    State,
    all_metrics,
    get_metric,
    register_metric,
)

TINY = "gmm:components=2,shape=1x2x2,seed=3"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFBENCH_HOME", str(tmp_path / "home"))


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made in a test are forgotten after it."""
    all_metrics()
    monkeypatch.setattr(registry, "METRICS", dict(registry.METRICS))
    monkeypatch.setattr(registry, "_STATES", dict(registry._STATES))


# ---- a new metric: everything it needs is this block (in the package: its own module + one import line) ----


class PixelSums:
    """Per-block sum and count of sample values, for the mean pixel value."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def state(self) -> dict[str, np.ndarray]:
        return {"total": np.asarray(self.total), "count": np.asarray(self.count, dtype=np.int64)}

    def load(self, s: dict[str, np.ndarray]) -> None:
        self.total, self.count = float(s["total"]), int(s["count"])


def _add(acc: PixelSums, batch: Batch) -> None:
    assert batch.images is not None
    acc.total += float(batch.images.double().sum())
    acc.count += batch.images.numel()


def _mean_value(states, ctx):
    return sum(s.total for s in states) / sum(s.count for s in states), {}


MEAN_PIXEL = Metric(
    "mean-pixel",
    "lower",
    ("samples",),
    "mean sample value (a test metric)",
    State("pixel_sums", lambda ctx: PixelSums(), _add),
    _mean_value,
)


def test_a_new_metric_is_one_registration_and_runs_in_a_cell(scratch_registry):
    from diffbench.models.analytic import load_builtin
    from diffbench.sampling.run import Sampler
    from diffbench.sampling.spec import SamplerSpec
    from diffbench.sweep.bench import prepare
    from diffbench.sweep.cell import run_cell

    register_metric(MEAN_PIXEL)
    assert get_metric("mean-pixel") is MEAN_PIXEL
    tiny = load_builtin(TINY)
    spec = SamplerSpec.make(solver="euler", nfe=4)
    bench = prepare(tiny, seeds=range(12), metrics=["mean-pixel", "fd-exact"], blocks=2, batch=5, device="cpu")
    r = run_cell(bench, spec)
    x = Sampler(tiny, spec, device="cpu").run(list(range(12))).images.double()
    m = r.metrics["mean-pixel"]
    assert m["blocks"] == pytest.approx([float(x[:6].mean()), float(x[6:].mean())], rel=1e-12)
    assert m["all"] == pytest.approx(float(x.mean()), rel=1e-12)
    assert m["value"] == pytest.approx(float(x.mean()), rel=1e-12)  # mean of equal blocks
    assert m["better"] == "lower" and m["n"] == 6 and m["n_all"] == 12
    assert set(r.metrics) == {"mean-pixel", "fd-exact"}


def test_registration_is_validated_and_refuses_duplicates(scratch_registry):
    register_metric(MEAN_PIXEL)
    with pytest.raises(ValueError, match="already registered"):
        register_metric(MEAN_PIXEL)
    with pytest.raises(ValueError, match="already registered"):
        register_metric(Metric("pr", "higher", ("features",), "", MEAN_PIXEL.state, _mean_value))  # an alias
    with pytest.raises(ValueError, match="better"):
        register_metric(Metric("m1", "smaller", ("samples",), "", MEAN_PIXEL.state, _mean_value))
    with pytest.raises(ValueError, match="needs"):
        register_metric(Metric("m2", "lower", ("pixels",), "", MEAN_PIXEL.state, _mean_value))
    with pytest.raises(ValueError, match="needs"):
        register_metric(Metric("m3", "lower", (), "", MEAN_PIXEL.state, _mean_value))
    other = State(FEATURE_MOMENTS.name, lambda ctx: PixelSums(), _add)  # a second accumulator, one name
    with pytest.raises(ValueError, match="another accumulator"):
        register_metric(Metric("m4", "lower", ("samples",), "", other, _mean_value))
    with pytest.raises(ValueError, match="space"):
        register_metric(Metric("m5", "lower", ("samples",), "", MEAN_PIXEL.state, _mean_value, space="clip"))
    assert not {"m1", "m2", "m3", "m4", "m5"} & set(registry.METRICS)


def test_every_builtin_metric_is_registered_with_its_direction_and_needs():
    got = {m.name: (m.better, m.needs) for m in all_metrics()}
    assert got["fid"] == ("lower", ("features", "ref-moments"))
    assert got["is"] == ("higher", ("logits",))
    assert got["precision"][0] == got["recall"][0] == "higher"
    assert got["ref-error"] == ("lower", ("reference",))
    assert {"fd", "kid", "fd-exact", "sw"} <= set(got)
    # metrics that read one accumulator share it: a batch is folded in once
    assert get_metric("fid").state is get_metric("fd").state
    assert get_metric("kid").state is get_metric("precision").state is get_metric("recall").state


def test_scoring_checkpoint_round_trip_and_not_applicable_metrics():
    ctx = MetricContext(block_size=3, n_all=6)
    a = Scoring(["ref-error"], ctx, blocks=2)
    errs = [torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64), torch.tensor([0.0, 9.0, 1.0], dtype=torch.float64)]
    for b, e in enumerate(errs):
        a.consume(b, Batch(ref_sq_errors=e, ref_cached=b == 1))
    b = Scoring(["ref-error"], MetricContext(block_size=3, n_all=6), blocks=2)
    b.load(a.state())
    ra, rb = a.finish()["ref-error"], b.finish()["ref-error"]
    assert ra == rb
    assert ra["blocks"] == pytest.approx([math.sqrt(5.25 / 3), math.sqrt(10 / 3)])
    assert ra["all"] == pytest.approx(math.sqrt(15.25 / 6)) and ra["max_rms"] == 3.0 and ra["cached"] == 3
    assert isinstance(b.blocks[0]["ref_error"], SumsAcc)
    off = Scoring(["ref-error"], ctx, blocks=2, not_applicable={"ref-error": "stochastic"})
    assert off.blocks == [{}, {}]
    assert off.finish()["ref-error"] == {
        "value": None,
        "better": "lower",
        "note": "stochastic",
        "blocks": [],
        "n": 3,
        "n_all": 6,
    }
