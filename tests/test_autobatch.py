"""--batch auto: halving on out-of-memory loses and repeats no seed and gives the fixed-batch results; the size
that fitted is remembered; the CPU default is said in one line; bad --batch values are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diffbench
from diffbench.errors import ConfigError, DiffbenchError
from diffbench.sampling import autobatch
from diffbench.sampling.autobatch import BatchFit, parse_batch
from diffbench.sampling.run import Sampler, iter_batches
from diffbench.sampling.spec import SamplerSpec
from diffbench.sweep.cell import prepare, run_cell

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return diffbench.load("digits-edm", device="cpu")



def oom_above(limit: int, fn, calls: list[int]):
    """fn, but a batch of more than `limit` seeds raises CUDA's out-of-memory error (as a full GPU would)."""

    def wrapped(seeds, **kw):
        calls.append(len(seeds))
        if len(seeds) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return fn(seeds, **kw)

    return wrapped


def test_halving_gives_the_fixed_batch_images(digits, tmp_path):
    run = Sampler(digits, SamplerSpec(steps=4), device="cpu")
    seeds = list(range(10, 21))  # 11 seeds
    fixed = torch.cat([b.images for b in iter_batches(digits, seeds=seeds, batch=2, sampler=run)])
    calls: list[int] = []
    cache = tmp_path / "batch-sizes.json"
    fit = BatchFit(8, key="k", cache=cache)
    out = fit.run(oom_above(2, run.run, calls), seeds)
    assert out.seeds == seeds  # none lost, none repeated, in order
    assert torch.equal(out.images, fixed)
    assert calls[:3] == [8, 4, 2] and fit.size == 2 and fit.halvings == 2
    assert sum(n for n in calls if n <= 2) == len(seeds)  # every seed sampled exactly once in a finished batch
    assert json.loads(cache.read_text()) == {"k": 2}  # remembered


def test_remembered_size_is_the_next_start(tmp_path, monkeypatch):
    monkeypatch.setattr(autobatch, "_cache_path", lambda: tmp_path / "batch-sizes.json")
    (tmp_path / "batch-sizes.json").write_text(json.dumps({"m|gpu": 96}))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: None)
    assert BatchFit.auto("m|gpu", torch.device("cuda"), n_seeds=50_000).size == 96
    assert BatchFit.auto("other", torch.device("cuda"), n_seeds=50_000).size == autobatch.CUDA_START
    assert BatchFit.auto("other", torch.device("cuda"), n_seeds=100).size == 100  # never above the seeds
    cpu = BatchFit.auto("m|gpu", torch.device("cpu"), n_seeds=50_000)
    assert cpu.size == autobatch.CPU_BATCH and not cpu.remember
    assert "no out-of-memory search" in autobatch.describe(cpu, torch.device("cpu"))


def test_oom_at_batch_one_is_one_clear_error(digits):
    run = Sampler(digits, SamplerSpec(steps=3), device="cpu")
    with pytest.raises(DiffbenchError, match="out of GPU memory at batch 1"):
        BatchFit(4).run(oom_above(0, run.run, []), [0, 1, 2])


def test_sweep_cell_with_auto_batch_equals_fixed_batch(digits, monkeypatch):
    """A whole cell (blocks, metrics) under --batch auto with injected out-of-memory: the images of the cell at
    batch 5, bit for bit, and its metric to float32 rounding (the extractor sees the joined batch of 10)."""
    spec = SamplerSpec(steps=4)

    def bench_at(batch, images):
        b = prepare(digits, seeds=range(20), metrics=["is"], extractor="digits", blocks=2, batch=batch, device="cpu")
        b.save_images = lambda spec, uint8, seeds, labels: images.append((list(seeds), uint8.clone()))
        return b

    fixed_images: list = []
    fixed = run_cell(bench_at(5, fixed_images), spec)
    auto_images: list = []
    bench = bench_at(64, auto_images)
    bench.batch_auto = True
    calls: list[int] = []
    real = Sampler.run

    def run(self, seeds, **kw):
        return oom_above(5, lambda s, **k: real(self, s, **k), calls)(seeds, **kw)

    monkeypatch.setattr(Sampler, "run", run)
    auto = run_cell(bench, spec)
    assert [s for s, _ in auto_images] == [list(range(0, 10)), list(range(10, 20))]
    assert torch.equal(torch.cat([x for _, x in auto_images]), torch.cat([x for _, x in fixed_images]))
    assert auto.metrics["is"]["value"] == pytest.approx(fixed.metrics["is"]["value"], rel=1e-6)
    assert auto.provenance["batch"] == {"auto": 10, "fitted": 5}  # the block size, then halved once
    assert sorted(n for n in calls if n <= 5) == [5, 5, 5, 5]  # each seed sampled once in a finished batch


@pytest.mark.parametrize("text", ["0", "-2", "x", "1.5", ""])
def test_parse_batch_refuses(text):
    with pytest.raises(ConfigError, match="--batch must be a positive integer or auto"):
        parse_batch(text)


def test_parse_batch_accepts():
    assert parse_batch("auto") == "auto" and parse_batch("AUTO") == "auto"
    assert parse_batch("32") == 32 and parse_batch(7) == 7


def test_batch_auto_and_bad_batch_through_the_command(tmp_path):
    bin_ = str(Path(sys.executable).parent / "diffbench")
    base = [bin_, "sample", "digits-edm", "--seeds", "0-2", "--nfe", "3", "--device", "cpu"]
    ok = subprocess.run([*base, "--batch", "auto", "-o", str(tmp_path / "a.npz")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "--batch auto on cpu: batch 3 (no out-of-memory search off CUDA)" in ok.stderr
    for bad in ("0",):  # the other bad values: test_parse_batch_refuses
        p = subprocess.run([*base, "--batch", bad, "-o", str(tmp_path / "b")], capture_output=True, text=True)
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        assert p.returncode == 2 and len(lines) == 1 and "--batch" in lines[0], p.stderr
        assert not (tmp_path / "b").exists()
