"""The cell runner: sample one spec over the bench's seeds, quantize once, stream into the metrics' accumulators.

This is the one code path behind every number a user compares with a paper that comes straight from a
sampler: `diffbench fid --model`, `diffbench sweep` and the Python API (`reference_error`, `fid_of_spec`)
all call `run_cell`. The batch loop meets the sampler here and nowhere else in scoring: it fills each
`Batch` with what the requested metrics need (uint8 images, features, logits, the reference-solution
errors) and feeds it to `Scoring` (diffbench.metrics.registry), the same loop `diffbench fid` runs on files.
Seeds are split into K consecutive blocks of equal size; a metric's value is that of all N samples, its
interval the delete-one-block jackknife over the K blocks. Every cell of a sweep uses the same seeds, so the
leave-one-out values of two cells are paired.

The bench (`Bench`, `prepare`) lives in diffbench.sweep.bench, identity in diffbench.sweep.identity, the
single-cell APIs in diffbench.sweep.single_cell; their names stay importable from here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from diffbench.distributed import SINGLE, World
from diffbench.io import quantize
from diffbench.metrics.accumulators import pack, unpack
from diffbench.metrics.reference_error import reference_samples, squared_errors
from diffbench.metrics.registry import Batch, Scoring, featurize
from diffbench.sampling.initial import GAUSSIAN, initial_state
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.run import Sampler
from diffbench.sampling.spec import SamplerSpec
from diffbench.sweep.bench import Bench, deterministic_reason


@dataclass(frozen=True)
class BatchProgress:
    """Reported after each finished batch of a cell."""

    images_done: int
    images_total: int
    seconds: float  # wall time of this cell so far (all runs of it)
    images_per_s: float  # in this process


@dataclass
class CellResult:
    """A finished cell: per-metric results (JSON-ready), its plan and provenance, wall time and speed."""

    metrics: dict[str, dict[str, Any]]
    plan: dict[str, Any]
    provenance: dict[str, Any]
    wall_s: float
    images_per_s: float
    nfe: int
    resumed_from: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


def not_applicable(bench: Bench, spec: SamplerSpec) -> dict[str, str]:
    """{metric: why} for the bench's metrics that give no number for this spec (sampler-side knowledge)."""
    out: dict[str, str] = {}
    solved = [m for m in _metrics(bench) if {"reference", "reference-features"} & set(m.needs)]
    if solved:
        why = deterministic_reason(spec)
        if why is not None:
            out.update({m.name: why for m in solved})
    return out


def _metrics(bench: Bench) -> list[Any]:
    from diffbench.metrics.registry import get_metric

    return [get_metric(m) for m in bench.metrics]


def _checkpoint(scoring: Scoring, n_done: int, wall_s: float) -> bytes:
    s = scoring.state()
    s["cell"] = {"n_done": np.asarray(n_done, dtype=np.int64), "wall_s": np.asarray(wall_s)}
    if "ref_method" in scoring.ctx.meta:
        s["cell"]["ref_method"] = np.asarray(scoring.ctx.meta["ref_method"])
    return pack(s)


def _resume(scoring: Scoring, blob: bytes) -> tuple[int, float]:
    s = unpack(blob)
    scoring.load(s)
    if "ref_method" in s["cell"]:
        scoring.ctx.meta["ref_method"] = str(s["cell"]["ref_method"])
    return int(s["cell"]["n_done"]), float(s["cell"]["wall_s"])


def run_cell(
    bench: Bench,
    spec: SamplerSpec,
    *,
    state: bytes | None = None,
    checkpoint: Callable[[int, bytes], None] | None = None,
    checkpoint_every: int | None = None,
    on_batch: Callable[[BatchProgress], None] | None = None,
    world: World | None = None,
) -> CellResult:
    """Sample `spec` over the bench's seeds and compute its metrics, per seed block and over all seeds.

    state: a checkpoint from an interrupted run of this cell (resumes after its last finished batch).
    checkpoint(n_done, state): called after every `checkpoint_every` batches and at each block's end; the
    store writes both in one transaction. With checkpoint_every None, after every batch unless writing the
    last checkpoint took more than a tenth of the time since it (a 2048-d FID state is 34 MB), so
    checkpoints cost at most ~10% of the run. When checkpoints happen never changes the numbers.
    Value per metric: the metric of all N samples, with the per-block values (at n = N/K), the K
    leave-one-block-out values and the jackknife interval (diffbench.metrics.registry.block_result).

    world: the ranks of a torchrun launch (diffbench.distributed). The batches (the same ones, with the same
    seeds, as in one process) are dealt out in rounds, one per rank; each rank samples and featurizes its
    batch, rank 0 folds them into the accumulators in seed order, checkpoints and writes. So the numbers are
    those of one process, bit for bit where the kernels do not depend on the process. Only rank 0 is given
    `state`, `checkpoint` and `on_batch`; every rank returns the same result.
    """
    world = world or SINGLE
    sampler = Sampler(bench.model, spec, device=bench.device)
    sampler.check_seeds(bench.seeds)  # the whole overlap with a tuned grid's calibration seeds, named at once
    if world.main:  # a grid tuned for another solver or model: one line on stderr (fid, sweep)
        from diffbench.sweep.tune import warn_tuned_grid

        warn_tuned_grid(bench.model, spec)
    ctx = bench.context(sample_dim=int(np.prod(sampler.shape)))
    ctx.start = {"sigma": sampler.plan.sigma_first, "prior": sampler.prior if sampler.prior is not None else GAUSSIAN}
    # ranks other than 0 only produce batches: no accumulators (a 2048-d FID block state is 34 MB)
    blocks = bench.blocks if world.main else 0
    scoring = Scoring(bench.metrics, ctx, blocks=blocks, not_applicable=not_applicable(bench, spec))
    wants = _Wants(
        features=scoring.needs("features"),
        logits=scoring.needs("logits"),
        uint8=bench.save_images is not None,
        reference=scoring.needs("reference"),
        reference_features=scoring.needs("reference-features"),
        images=any(scoring.needs(n) for n in ("samples", "exact")),
    )
    wall0 = 0.0
    n_done = 0
    if state is not None and world.main:
        n_done, wall0 = _resume(scoring, state)
    n_done = int(world.broadcast(n_done, what="resuming the cell"))
    resumed_from = n_done
    total, size = len(bench.seeds), bench.block_size
    t0, sampled, since = time.perf_counter(), 0, 0
    last_write, write_cost = t0, 0.0
    wall_s = wall0
    sig = sampler.plan.sigmas.to(torch.float64).cpu()
    positive = sig[sig > 0]
    ref_range = (float(positive[0]), float(positive[-1]), float(sig[-1]) == 0.0)
    fit, step = _batch_fit(bench, sampler)
    tasks: list[tuple[int, int, int]] = []  # (block, start, stop): the batches still to run, in seed order
    for b in range(bench.blocks):
        lo, hi = b * size, (b + 1) * size
        for start in range(lo, hi, step):
            stop = min(start + step, hi)
            if stop <= n_done:
                continue
            if start < n_done:  # a checkpoint written under another batch size: continue from it
                start = n_done
            tasks.append((b, start, stop))
    for r0 in range(0, len(tasks), world.size):
        round_ = tasks[r0 : r0 + world.size]
        batches: list[tuple[int, Batch]]
        if world.size == 1:
            b, start, stop = round_[0]
            batches = [(b, _produce(bench, sampler, bench.seeds[start:stop], wants, ref_range, ctx.meta, fit))]
        else:
            batches = _exchange(world, bench, sampler, round_, wants, ref_range, ctx.meta, fit)
        if not world.main:
            continue
        block_end = False
        for (b, start, stop), (_, batch) in zip(round_, batches):
            if bench.save_images is not None and batch.uint8 is not None:
                bench.save_images(spec, batch.uint8, batch.seeds, batch.labels)
            scoring.consume(b, batch)
            n_done, sampled = stop, sampled + (stop - start)
            block_end = block_end or stop == (b + 1) * size
        since += 1
        wall_s = wall0 + time.perf_counter() - t0
        now = time.perf_counter()
        due = since >= checkpoint_every if checkpoint_every else now - last_write >= 10 * write_cost
        if checkpoint is not None and (due or block_end):
            checkpoint(n_done, _checkpoint(scoring, n_done, wall_s))
            last_write = time.perf_counter()
            write_cost, since = last_write - now, 0
        if on_batch is not None:
            el = time.perf_counter() - t0
            on_batch(BatchProgress(n_done, total, wall_s, sampled / el if el > 0 else math.nan))
    wall_s = wall0 + time.perf_counter() - t0
    results = scoring.finish() if world.main else None
    results, wall_s = world.broadcast((results, wall_s), what="finishing the cell")
    if isinstance(bench.model, torch.nn.Module):  # a metric may have moved an analytic model to the CPU
        bench.model.to(bench.device)
    prov = sampler.provenance(bench.seeds)
    prov.update(
        {
            "model_name": bench.model_name,
            "model_sha256": bench.model_sha256,
            "ref": bench.ref_label,
            "ref_sha256": bench.ref_sha256,
            "extractor": bench.extractor_id,
            "metrics": list(bench.metrics),
            "blocks": bench.blocks,
            "block_size": size,
            "batch": bench.batch if fit is None else {"auto": step, "fitted": fit.size},
            "class": bench.class_label,
        }
    )
    if world.size > 1:
        prov["processes"] = world.size  # not in the identity: the numbers are those of one process
    meta = world.broadcast(dict(ctx.meta), what="finishing the cell")
    return CellResult(
        metrics=results,
        plan=sampler.plan.to_dict(),
        provenance=prov,
        wall_s=wall_s,
        images_per_s=total / wall_s if wall_s > 0 else math.nan,
        nfe=sampler.plan.nfe,
        resumed_from=resumed_from,
        extras=meta,
    )


def _batch_fit(bench: Bench, sampler: Sampler) -> tuple[Any, int]:
    """(BatchFit or None, the cell's batch): --batch auto starts each cell at the size remembered for its model,
    device and dtypes (the spec's net dtype and guidance change what fits)."""
    if not bench.batch_auto:
        return None, bench.batch
    from diffbench.sampling.autobatch import BatchFit, fit_key

    key = fit_key(bench.model_sha256, sampler.device, sampler.spec, sampler.shape)
    fit = BatchFit.auto(key, sampler.device, n_seeds=bench.block_size)
    return fit, fit.size


@dataclass(frozen=True)
class _Wants:
    """What the metrics (and an image writer) read of a batch."""

    features: bool
    logits: bool
    uint8: bool
    reference: bool
    reference_features: bool
    images: bool


def _produce(
    bench: Bench,
    sampler: Sampler,
    seeds: list[int],
    wants: _Wants,
    ref_range: tuple[float, float, bool],
    meta: dict[str, Any],
    fit: Any = None,
) -> Batch:
    """One batch sampled, quantized once, featurized and (ref-error, ref-fd) solved by the reference: what the
    metrics consume."""
    labels = None if bench.class_label is None else torch.full((len(seeds),), bench.class_label)
    out = sampler.run(seeds, class_labels=labels) if fit is None else fit.run(sampler.run, seeds, labels)
    batch = Batch(images=out.images, seeds=seeds, labels=out.class_labels)
    if wants.uint8 or wants.features or wants.logits:
        batch.uint8 = quantize(out.images)
    if wants.features or wants.logits:
        ref_dim = bench.ref.dim if bench.ref is not None and wants.features else None
        assert bench.extractor is not None
        featurize(batch, bench.extractor, logits=wants.logits, ref_dim=ref_dim)
    if wants.reference or wants.reference_features:
        _reference_errors(bench, sampler, batch, ref_range, meta, features=wants.reference_features)
    return batch


def _cpu(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach().cpu()


def _exchange(
    world: World,
    bench: Bench,
    sampler: Sampler,
    round_: list[tuple[int, int, int]],
    wants: _Wants,
    ref_range: tuple[float, float, bool],
    meta: dict[str, Any],
    fit: Any = None,
) -> list[tuple[int, Batch]]:
    """One round: rank r produces batch r of the round; rank 0 receives them all in seed order (on the CPU,
    only the fields the metrics read). An error on any rank stops every rank with that rank's line."""

    def produce() -> tuple[int, Batch, Any]:
        b, start, stop = round_[world.rank]
        batch = _produce(bench, sampler, bench.seeds[start:stop], wants, ref_range, meta, fit)
        wire = Batch(
            images=_cpu(batch.images) if wants.images else None,
            seeds=batch.seeds,
            labels=_cpu(batch.labels),
            uint8=_cpu(batch.uint8) if wants.uint8 else None,
            features=_cpu(batch.features),
            logits=_cpu(batch.logits),
            ref_sq_errors=_cpu(batch.ref_sq_errors),
            ref_cached=batch.ref_cached,
            ref_features=_cpu(batch.ref_features),
        )
        return b, wire, meta.get("ref_method")

    got = world.exchange(produce if world.rank < len(round_) else None, what="gathering a round of batches")
    out = []
    for b, wire, method in got:
        if method is not None:
            meta["ref_method"] = method
        out.append((b, wire))
    return out


def _reference_errors(
    bench: Bench,
    sampler: Sampler,
    batch: Batch,
    ref_range: tuple[float, float, bool],
    meta: dict[str, Any],
    *,
    features: bool = False,
) -> None:
    """The sampler side of ref-error and ref-fd: the reference ODE solution of this batch's own latents, as
    per-sample errors and (features) as extractor features of its images, quantized as the samples are."""
    sigma_from, sigma_to, final = ref_range
    x0 = initial_state(
        NoiseSource(batch.seeds, device=sampler.device), sampler.plan, sampler.shape, prior=sampler.prior
    )
    ref, method, cached = reference_samples(
        sampler.denoiser,
        x0,
        sigma_from=sigma_from,
        sigma_to=sigma_to,
        final=final,
        class_labels=batch.labels,
        fingerprint=bench.model_sha256,
        ref_steps=bench.ref_steps,
        cache=bench.cache,
    )
    meta["ref_method"] = method
    assert batch.images is not None
    batch.ref_sq_errors, batch.ref_cached = squared_errors(batch.images, ref), cached
    if features:
        assert bench.extractor is not None
        solved = Batch(uint8=quantize(ref))
        featurize(solved, bench.extractor, logits=False, ref_dim=None if bench.ref is None else bench.ref.dim)
        batch.ref_features = solved.features


# names that moved out of this module with the split, still importable from here
_MOVED = {
    "prepare": "bench",
    "Bench": "bench",
    "METRICS": "bench",
    "default_metrics": "bench",
    "is_exact_model": "bench",
    "model_sha256": "bench",
    "cell_identity": "identity",
    "fid_of_spec": "single_cell",
    "fid_result": "single_cell",
    "reference_error": "single_cell",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"diffbench.sweep.{_MOVED[name]}"), name)
    raise AttributeError(f"module 'diffbench.sweep.cell' has no attribute '{name}'")
