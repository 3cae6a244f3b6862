"""The cell runner: sample one spec over the sweep's seeds, quantize once, stream into metric accumulators.

This is the one code path behind every number a user compares with a paper: `diffbench fid --model`,
`diffbench sweep` and the Python API (`reference_error`, `fid_of_spec`) all call `run_cell`. The model,
feature extractor and reference statistics are loaded once (`prepare`) and reused for every cell.
Seeds are split into B consecutive blocks of equal size; every cell of a sweep uses the same seeds, so
block values of two cells are paired.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from diffbench.errors import ConfigError
from diffbench.io import quantize
from diffbench.metrics.extractors import INCEPTION_ID, FeatureExtractor, has_logits, load_extractor
from diffbench.metrics.fid import FIDResult, block_summary
from diffbench.metrics.frechet import frechet_distance
from diffbench.metrics.reference_error import (
    ReferenceErrorResult,
    model_fingerprint,
    reference_samples,
    squared_errors,
)
from diffbench.metrics.stats import Statistics, check_enough, check_finite
from diffbench.provenance import compact_seeds
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.run import Sampler, resolve_device
from diffbench.sampling.spec import SamplerSpec
from diffbench.sweep.accumulators import (
    Chunk,
    MomentsAcc,
    RowsAcc,
    SumsAcc,
    as_float,
    merge_moments,
    pack,
    unpack,
)


@dataclass(frozen=True)
class MetricInfo:
    """A metric a cell can compute: which way is better and what it needs."""

    name: str
    better: str  # lower | higher
    needs: str  # features | exact | reference
    description: str


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("fid", "lower", "features", "FID: Fréchet distance in Inception-v3 pool3 space (needs --ref)"),
        MetricInfo("fd", "lower", "features", "Fréchet distance in the --extractor feature space (needs --ref)"),
        MetricInfo("kid", "lower", "features", "KID (needs reference features)"),
        MetricInfo("precision", "higher", "features", "k-NN precision (needs reference features)"),
        MetricInfo("recall", "higher", "features", "k-NN recall (needs reference features)"),
        MetricInfo("is", "higher", "features", "Inception Score (needs an extractor with logits)"),
        MetricInfo("ref-error", "lower", "reference", "RMS distance to the reference ODE solution, same latents"),
        MetricInfo("fd-exact", "lower", "exact", "analytic models: Fréchet distance to the exact mean and covariance"),
        MetricInfo("sw", "lower", "exact", "analytic models: sliced Wasserstein-2 to fresh exact samples"),
    )
}
ALIASES = {"pr": ("precision", "recall")}  # one request, two columns
FEATURE_METRICS = ("fid", "fd", "kid", "precision", "recall", "is")
SW_PROJECTIONS = 256


def parse_metrics(names: Sequence[str]) -> tuple[str, ...]:
    """Metric names in request order, `pr` expanded; an unknown one is one clear error."""
    from diffbench.errors import UnknownNameError

    out: list[str] = []
    for n in names:
        n = str(n).strip()
        for m in ALIASES.get(n, (n,)):
            if m not in METRICS:
                raise UnknownNameError("metric", n, [*METRICS, *ALIASES])
            if m not in out:
                out.append(m)
    if not out:
        raise ConfigError("no metric given")
    return tuple(out)


def is_exact_model(model: Any) -> bool:
    """True for models with exact moments and exact samples (the analytic mixtures)."""
    return all(callable(getattr(model, a, None)) for a in ("mean", "covariance", "sample_data"))


def default_metrics(model: Any, *, ref: Any = None, extractor: str | None = None) -> tuple[str, ...]:
    """What the model supports without downloads: the exact metrics for analytic models, else ref-error;
    with a reference, first the Fréchet distance in its feature space (`fd` with an extractor, else `fid`).

    ref-error is not a default for analytic models: their scipy reference costs more than the sweep itself.
    """
    out: list[str] = []
    if ref is not None:
        out.append("fd" if extractor else "fid")
    out += ["fd-exact", "sw"] if is_exact_model(model) else ([] if out else ["ref-error"])
    return tuple(out)


def model_sha256(model: Any) -> str:
    """The checkpoint file's sha256 when the model came from a file, else a hash of its parameters."""
    info = getattr(model, "source_info", None)
    if isinstance(info, dict) and info.get("sha256"):
        return str(info["sha256"])
    return model_fingerprint(model)


def _model_dtype(model: Any) -> str | None:
    if isinstance(model, torch.nn.Module):
        for t in (*model.parameters(), *model.buffers()):
            if t.is_floating_point():
                return str(t.dtype).replace("torch.", "")
    return None


@dataclass
class Bench:
    """What a sweep loads once: the model on its device, the extractor, reference statistics, seeds, metrics."""

    model: Any
    model_name: str
    model_sha256: str
    device: torch.device
    seeds: list[int]
    blocks: int
    batch: int
    metrics: tuple[str, ...]
    class_label: int | None = None
    extractor: FeatureExtractor | None = None
    ref: Statistics | None = None
    ref_label: str | None = None
    allow_small_n: bool = False
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    ref_steps: int = 1024
    cache: bool = True
    save_images: Callable[[Any, torch.Tensor, list[int], torch.Tensor | None], None] | None = None

    @property
    def block_size(self) -> int:
        return len(self.seeds) // self.blocks

    @property
    def ref_sha256(self) -> str | None:
        if self.ref is None:
            return None
        return self.ref.source_sha256 or self.ref.file_sha256

    @property
    def extractor_id(self) -> str | None:
        return None if self.extractor is None else self.extractor.id


def prepare(
    model: Any,
    *,
    seeds: Sequence[int],
    metrics: Sequence[str] | None = None,
    blocks: int = 1,
    batch: int = 64,
    device: str | torch.device = "auto",
    ref: Any = None,
    extractor: str | FeatureExtractor | None = None,
    weights_path: str | os.PathLike | None = None,
    class_label: int | None = None,
    allow_small_n: bool = False,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    ref_steps: int = 1024,
    cache: bool = True,
    model_name: str | None = None,
) -> Bench:
    """Load what every cell shares and check the metric set against the model before sampling anything.

    model: a Denoiser or a name for diffbench.load. ref: statistics file, image source or Statistics (needed
    by fid / fd / kid / precision / recall). Raises ConfigError for metrics the model or reference cannot give.
    """
    from diffbench.metrics.fid import _as_source
    from diffbench.metrics.stats import cached_statistics

    if isinstance(model, str):
        from diffbench.models.load import load

        model_name = model_name or model
        model = load(model, device="cpu")
    dev = resolve_device(device)
    if isinstance(model, torch.nn.Module):
        model = model.to(dev).eval()
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise ConfigError("the seed list repeats a seed")
    if blocks < 1:
        raise ConfigError(f"blocks must be >= 1, got {blocks}")
    if len(seeds) % blocks:
        raise ConfigError(f"{len(seeds)} seeds do not split into {blocks} equal seed blocks")
    if batch < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch}")
    names = parse_metrics(metrics) if metrics is not None else default_metrics(model, ref=ref, extractor=extractor)
    label_dim = int(getattr(model, "label_dim", 0) or 0)
    if class_label is not None and not 0 <= class_label < max(label_dim, 1):
        raise ConfigError(
            "class labels were given, but the model is unconditional"
            if not label_dim
            else f"class labels must be in [0, {label_dim - 1}]"
        )
    bench = Bench(
        model=model,
        model_name=model_name or str(getattr(model, "spec", None) or type(model).__name__),
        model_sha256=model_sha256(model),
        device=dev,
        seeds=seeds,
        blocks=blocks,
        batch=batch,
        metrics=names,
        class_label=class_label,
        allow_small_n=allow_small_n,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        pr_k=pr_k,
        ref_steps=ref_steps,
        cache=cache,
    )
    per_block = bench.block_size
    exact = [m for m in names if METRICS[m].needs == "exact"]
    if exact and not is_exact_model(model):
        raise ConfigError(f"metric {exact[0]} needs an analytic model with exact moments; {bench.model_name} has none")
    if "fd-exact" in names and not allow_small_n:
        d = int(model.mean().numel())
        check_enough(per_block, d, what="fd-exact: samples" + (" per block" if blocks > 1 else ""))
    feat = [m for m in names if m in FEATURE_METRICS]
    if feat:
        if "fid" in names and extractor is not None and not _is_inception(extractor):
            raise ConfigError("fid is the Fréchet distance in Inception space; use fd with --extractor")
        if "fd" in names and extractor is None:
            raise ConfigError("metric fd needs --extractor (a feature space); fid uses Inception-v3")
        ex_name = INCEPTION_ID if extractor is None else extractor
        bench.extractor = (
            ex_name if not isinstance(ex_name, str) else load_extractor(ex_name, device=dev, weights_path=weights_path)
        )
        if "is" in names and not has_logits(bench.extractor):
            raise ConfigError(f"feature extractor '{bench.extractor.id}' gives no logits, so no Inception Score")
        needs_ref = [m for m in feat if m != "is"]
        if needs_ref:
            if ref is None:
                raise ConfigError(f"metric {needs_ref[0]} needs reference statistics (--ref)")
            keep = any(m in names for m in ("kid", "precision", "recall"))
            if isinstance(ref, Statistics):
                stats = ref
            else:
                src = _as_source(ref)
                if src is None:
                    raise ConfigError("ref must be a statistics file or an image folder, zip or npz")
                if isinstance(src, Statistics):
                    stats = src
                else:
                    stats, _ = cached_statistics(src, extractor=bench.extractor, batch=100, keep_features=keep)
            label = str(ref) if isinstance(ref, str | os.PathLike) else (stats.path or "reference")
            check_finite(stats, what=label)
            if stats.extractor_id is not None and stats.extractor_id != bench.extractor.id:
                raise ConfigError(
                    f"reference statistics come from extractor '{stats.extractor_id}', samples from "
                    f"'{bench.extractor.id}'"
                )
            if keep and stats.features is None:
                raise ConfigError(
                    f"{label} holds only moments (mu, sigma): KID and precision/recall need the reference "
                    "features; compute them with `diffbench stats SOURCE --keep-features`"
                )
            if not allow_small_n:
                if stats.n is not None:
                    check_enough(stats.n, stats.dim, what=label)
                check_enough(per_block, stats.dim, what="samples" + (" per block" if blocks > 1 else ""))
            bench.ref, bench.ref_label = stats, label
        from diffbench.denoiser import sample_shape

        shape = tuple(sample_shape(model))
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ConfigError(
                f"samples of shape {list(shape)} are not images, so no feature metrics; use the exact metrics"
            )
        if bench.ref is not None and bench.ref.resolution is not None:
            if tuple(bench.ref.resolution) != (int(shape[1]), int(shape[2])):
                r = bench.ref.resolution
                raise ConfigError(
                    f"reference images are {r[1]}x{r[0]}, samples {shape[2]}x{shape[1]}: different resolution"
                )
    return bench


def _is_inception(extractor: Any) -> bool:
    return (extractor if isinstance(extractor, str) else getattr(extractor, "id", "")).startswith(INCEPTION_ID)


def deterministic_reason(spec: SamplerSpec) -> str | None:
    """Why ref-error does not apply to this spec (a stochastic sampler), or None."""
    from diffbench.sampling.solvers import get_solver

    info = get_solver(spec.solver)
    stochastic = [k for k in ("S_churn", "churn_per_step", "eta") if (getattr(spec, k, None) or 0) > 0]
    if info.stochastic or stochastic:
        why = f"{', '.join(stochastic)} > 0" if stochastic else f"solver '{info.name}' is stochastic"
        return f"the reference-solution error needs a deterministic sampler ({why})"
    return None


def cell_identity(bench: Bench, spec: SamplerSpec, nfe: int) -> tuple[str, dict[str, Any]]:
    """(id, identity): sha256 of everything that determines a cell's numbers, nothing that does not.

    In: model and reference sha256, the full spec (endpoint and requested NFE included), the NFE spent, seeds,
    class, blocks, metrics and their options, extractor id, sampler and model dtypes, and the kind of device
    of the random generators (a CPU and a CUDA generator give different streams for one seed, REFERENCE §1).
    Not in: batch size, device index, process count, versions.
    """
    identity = {
        "model_sha256": bench.model_sha256,
        "ref_sha256": bench.ref_sha256,
        "spec": spec.to_dict(),
        "nfe": int(nfe),
        "seeds": compact_seeds(bench.seeds),
        "class": bench.class_label,
        "blocks": bench.blocks,
        "metrics": sorted(bench.metrics),
        "metric_options": _metric_options(bench),
        "extractor": bench.extractor_id,
        "dtypes": {"sampler": spec.dtype, "model": _model_dtype(bench.model)},
        "generator": bench.device.type,
    }
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest(), identity


def _metric_options(bench: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "kid" in bench.metrics:
        out["kid"] = {"subsets": bench.kid_subsets, "subset_size": bench.kid_subset_size}
    if "precision" in bench.metrics or "recall" in bench.metrics:
        out["pr_k"] = bench.pr_k
    if "sw" in bench.metrics:
        out["sw_projections"] = SW_PROJECTIONS
    if "ref-error" in bench.metrics and not _analytic(bench.model):
        out["ref_steps"] = bench.ref_steps
    return out


def _analytic(model: Any) -> bool:
    from diffbench.metrics.reference_error import is_analytic

    return is_analytic(model)


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


class _Accumulators:
    """The accumulators of one cell: one set per seed block."""

    def __init__(self, bench: Bench, spec: SamplerSpec, sampler: Sampler):
        self.bench, self.spec = bench, spec
        m = set(bench.metrics)
        self.ref_error = "ref-error" in m and deterministic_reason(spec) is None
        self.blocks: list[dict[str, Any]] = []
        dim = int(np.prod(sampler.shape))
        for _ in range(bench.blocks):
            accs: dict[str, Any] = {}
            if m & {"fid", "fd"}:
                accs["features"] = MomentsAcc(bench.ref.dim if bench.ref is not None else 0)
            if m & {"kid", "precision", "recall"}:
                accs["feature_rows"] = RowsAcc(np.float32)
            if "is" in m:
                accs["logits"] = RowsAcc(np.float32)
            if "fd-exact" in m:
                accs["data"] = MomentsAcc(dim)
            if "sw" in m:
                accs["samples"] = RowsAcc(np.float64)
            if self.ref_error:
                accs["ref_error"] = SumsAcc()
            self.blocks.append(accs)
        self.needs_uint8 = bool(m & set(FEATURE_METRICS)) or bench.save_images is not None
        self.wall_s = 0.0
        self.meta: dict[str, Any] = {}

    def state(self, n_done: int) -> bytes:
        s = {f"b{i}.{k}": acc.state() for i, accs in enumerate(self.blocks) for k, acc in accs.items()}
        s["cell"] = {"n_done": np.asarray(n_done, dtype=np.int64), "wall_s": np.asarray(self.wall_s)}
        if "ref_method" in self.meta:
            s["cell"]["ref_method"] = np.asarray(self.meta["ref_method"])
        return pack(s)

    def load(self, blob: bytes) -> int:
        s = unpack(blob)
        for i, accs in enumerate(self.blocks):
            for k, acc in accs.items():
                if f"b{i}.{k}" not in s:
                    raise ConfigError("the checkpoint does not match this cell's metrics")
                acc.load(s[f"b{i}.{k}"])
        self.wall_s = float(s["cell"]["wall_s"])
        if "ref_method" in s["cell"]:
            self.meta["ref_method"] = str(s["cell"]["ref_method"])
        return int(s["cell"]["n_done"])


def run_cell(
    bench: Bench,
    spec: SamplerSpec,
    *,
    state: bytes | None = None,
    checkpoint: Callable[[int, bytes], None] | None = None,
    checkpoint_every: int | None = None,
    on_batch: Callable[[BatchProgress], None] | None = None,
) -> CellResult:
    """Sample `spec` over the bench's seeds and compute its metrics, per seed block and over all seeds.

    state: a checkpoint from an interrupted run of this cell (resumes after its last finished batch).
    checkpoint(n_done, state): called after every `checkpoint_every` batches and at each block's end; the
    store writes both in one transaction. With checkpoint_every None, after every batch unless writing the
    last checkpoint took more than a tenth of the time since it (a 2048-d FID state is 34 MB), so
    checkpoints cost at most ~10% of the run. When checkpoints happen never changes the numbers.
    Headline value per metric: the single value for one block, the mean over blocks otherwise (as
    `fid --blocks`); `all` is the metric on the union of the blocks.
    """
    sampler = Sampler(bench.model, spec, device=bench.device)
    accs = _Accumulators(bench, spec, sampler)
    n_done = accs.load(state) if state is not None else 0
    resumed_from = n_done
    total, size = len(bench.seeds), bench.block_size
    t0, sampled, since = time.perf_counter(), 0, 0
    last_write, write_cost = t0, 0.0
    wall0 = accs.wall_s
    sig = sampler.plan.sigmas.to(torch.float64).cpu()
    positive = sig[sig > 0]
    ref_range = (float(positive[0]), float(positive[-1]), float(sig[-1]) == 0.0)
    for b in range(bench.blocks):
        lo, hi = b * size, (b + 1) * size
        starts = range(lo, hi, bench.batch)
        for start in starts:
            stop = min(start + bench.batch, hi)
            if stop <= n_done:
                continue
            if start < n_done:  # a checkpoint written under another batch size: continue from it
                start = n_done
            seeds = bench.seeds[start:stop]
            labels = None if bench.class_label is None else torch.full((len(seeds),), bench.class_label)
            out = sampler.run(seeds, class_labels=labels)
            chunk = Chunk(images=out.images, seeds=seeds, labels=out.class_labels)
            if accs.needs_uint8:
                chunk.uint8 = quantize(out.images)
            if bench.save_images is not None:
                bench.save_images(spec, chunk.uint8, seeds, out.class_labels)
            _feed(bench, sampler, accs.blocks[b], chunk, ref_range, accs.meta)
            n_done, sampled, since = stop, sampled + len(seeds), since + 1
            accs.wall_s = wall0 + time.perf_counter() - t0
            now = time.perf_counter()
            due = since >= checkpoint_every if checkpoint_every else now - last_write >= 10 * write_cost
            if checkpoint is not None and (due or stop == hi):
                checkpoint(n_done, accs.state(n_done))
                last_write = time.perf_counter()
                write_cost, since = last_write - now, 0
            if on_batch is not None:
                el = time.perf_counter() - t0
                on_batch(BatchProgress(n_done, total, accs.wall_s, sampled / el if el > 0 else math.nan))
    elapsed = time.perf_counter() - t0
    accs.wall_s = wall0 + elapsed
    results = _finish(bench, spec, accs)
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
            "batch": bench.batch,
            "class": bench.class_label,
        }
    )
    return CellResult(
        metrics=results,
        plan=sampler.plan.to_dict(),
        provenance=prov,
        wall_s=accs.wall_s,
        images_per_s=total / accs.wall_s if accs.wall_s > 0 else math.nan,
        nfe=sampler.plan.nfe,
        resumed_from=resumed_from,
        extras=dict(accs.meta),
    )


def _feed(
    bench: Bench,
    sampler: Sampler,
    accs: dict[str, Any],
    chunk: Chunk,
    ref_range: tuple[float, float, bool],
    meta: dict[str, Any],
) -> None:
    """Fold one batch into one block's accumulators."""
    ex = bench.extractor
    if "features" in accs or "feature_rows" in accs or "logits" in accs:
        assert ex is not None and chunk.uint8 is not None
        if "logits" in accs:
            f, lg = ex.features_and_logits(chunk.uint8)  # type: ignore[attr-defined]
            accs["logits"].add(lg.float())
        else:
            f = ex.features(chunk.uint8)
        f = f.detach()
        if f.ndim != 2 or f.shape[0] != chunk.uint8.shape[0]:
            raise ConfigError(
                f"feature extractor '{ex.id}' gave shape {list(f.shape)} for {chunk.uint8.shape[0]} images"
            )
        if "features" in accs:
            if bench.ref is not None and f.shape[1] != bench.ref.dim:
                raise ConfigError(
                    f"reference has {bench.ref.dim}-d features, samples {f.shape[1]}-d: different extractors"
                )
            accs["features"].add(f)
        if "feature_rows" in accs:
            accs["feature_rows"].add(f.float())
    if "data" in accs:
        accs["data"].add(chunk.images)
    if "samples" in accs:
        accs["samples"].add(chunk.images)
    if "ref_error" in accs:
        sigma_from, sigma_to, final = ref_range
        z = NoiseSource(chunk.seeds, device=sampler.device).latents(sampler.shape)  # the sampler's first draw
        ref, method, cached = reference_samples(
            sampler.denoiser,
            z,
            sigma_from=sigma_from,
            sigma_to=sigma_to,
            final=final,
            class_labels=chunk.labels,
            fingerprint=bench.model_sha256,
            ref_steps=bench.ref_steps,
            cache=bench.cache,
        )
        meta["ref_method"] = method
        accs["ref_error"].add(squared_errors(chunk.images, ref), cached)


def _summary(blocks: list[float], union: float, info: MetricInfo, n: int, n_all: int) -> dict[str, Any]:
    mean, std, lo, ci_lo, ci_hi = block_summary(blocks)
    return {
        "value": as_float(union if len(blocks) == 1 else mean),
        "all": as_float(union),
        "blocks": [as_float(v) for v in blocks],
        "mean": as_float(mean),
        "std": as_float(std),
        "ci_low": as_float(ci_lo),
        "ci_high": as_float(ci_hi),
        "n": n,
        "n_all": n_all,
        "better": info.better,
    }


def _finish(bench: Bench, spec: SamplerSpec, accs: _Accumulators) -> dict[str, dict[str, Any]]:
    """Metric values per block and over all blocks."""
    from diffbench.metrics.distribution import exact_sliced_wasserstein

    out: dict[str, dict[str, Any]] = {}
    size, n_all = bench.block_size, len(bench.seeds)
    B = accs.blocks

    def put(name: str, blocks: list[float], union: float, **extra: Any) -> None:
        out[name] = {**_summary(blocks, union, METRICS[name], size, n_all), **extra}

    if "features" in B[0]:
        ref = bench.ref
        assert ref is not None

        def fd(m: Any) -> float:
            mu, sigma = m.numpy()
            return frechet_distance(mu1=mu, sigma1=sigma, mu2=ref.mu, sigma2=ref.sigma)

        vals = [fd(b["features"].m) for b in B]
        union = vals[0] if len(B) == 1 else fd(merge_moments([b["features"] for b in B]))
        for name in ("fid", "fd"):
            if name in bench.metrics:
                put(name, vals, union, extractor=bench.extractor_id)
    if "feature_rows" in B[0]:
        ref = bench.ref
        assert ref is not None and ref.features is not None
        rf = torch.as_tensor(ref.features)
        rows = [torch.as_tensor(b["feature_rows"].rows()) for b in B]
        every = torch.cat(rows)
        if "kid" in bench.metrics:
            from diffbench.metrics.kid import kid

            def k(f: torch.Tensor) -> tuple[float, float]:
                return kid(features1=f, features2=rf, subsets=bench.kid_subsets, subset_size=bench.kid_subset_size)

            kv = [k(f) for f in rows]
            ku = kv[0] if len(B) == 1 else k(every)
            put("kid", [v[0] for v in kv], ku[0], std=as_float(ku[1]))
        if "precision" in bench.metrics or "recall" in bench.metrics:
            from diffbench.metrics.precision_recall import precision_recall

            pv = [precision_recall(real=rf, fake=f, k=bench.pr_k) for f in rows]
            pu = pv[0] if len(B) == 1 else precision_recall(real=rf, fake=every, k=bench.pr_k)
            for i, name in enumerate(("precision", "recall")):
                if name in bench.metrics:
                    put(name, [v[i] for v in pv], pu[i])
    if "logits" in B[0]:
        from diffbench.metrics.inception_score import inception_score

        lg = [torch.as_tensor(b["logits"].rows()) for b in B]
        iv = [inception_score(logits=x) for x in lg]
        iu = iv[0] if len(B) == 1 else inception_score(logits=torch.cat(lg))
        put("is", [v[0] for v in iv], iu[0], std=as_float(iu[1]))
    if "data" in B[0]:
        mu2 = bench.model.mean().double().cpu().numpy()
        s2 = bench.model.covariance().double().cpu().numpy()

        def fde(m: Any) -> float:
            mu, sigma = m.numpy()
            return frechet_distance(mu1=mu, sigma1=sigma, mu2=mu2, sigma2=s2)

        vals = [fde(b["data"].m) for b in B]
        union = vals[0] if len(B) == 1 else fde(merge_moments([b["data"] for b in B]))
        put("fd-exact", vals, union)
    if "samples" in B[0]:
        model = bench.model.cpu() if isinstance(bench.model, torch.nn.Module) else bench.model
        xs = [torch.from_numpy(b["samples"].rows()) for b in B]
        vals = [exact_sliced_wasserstein(model, x, projections=SW_PROJECTIONS) for x in xs]
        union = vals[0] if len(B) == 1 else exact_sliced_wasserstein(model, torch.cat(xs), projections=SW_PROJECTIONS)
        bench.model.to(bench.device) if isinstance(bench.model, torch.nn.Module) else None
        put("sw", vals, union)
    if "ref-error" in bench.metrics:
        why = deterministic_reason(spec)
        if why is not None:
            out["ref-error"] = {"value": None, "better": "lower", "note": why, "blocks": [], "n": size, "n_all": n_all}
        else:
            sums = [b["ref_error"] for b in B]
            total = SumsAcc()
            total.v = np.sum([s.v for s in sums], axis=0)
            total.v[2] = max(s.v[2] for s in sums)
            put(
                "ref-error",
                [s.rms for s in sums],
                total.rms,
                max_rms=as_float(total.v[2]),
                cached=int(total.v[3]),
                reference=accs.meta.get("ref_method"),
            )
    return {m: out[m] for m in bench.metrics if m in out}


# ---- the single-cell APIs over run_cell -----------------------------------------------------------------


def reference_error(
    denoiser: Any,
    *,
    spec: SamplerSpec,
    seeds: Sequence[int],
    class_labels: int | None = None,
    batch: int = 64,
    device: str | torch.device = "cpu",
    ref_steps: int = 1024,
    cache: bool = True,
) -> ReferenceErrorResult:
    """RMS error of a deterministic sampler against scipy's adaptive solve (analytic models) or a long Heun.

    Both start from the same latents x_0 = z σ_0 (REFERENCE §1) and stop at the grid's last positive σ; with
    the edm endpoint the same final step to 0 (x = D(x; σ)) is applied to both, leaving discretisation error.
    The reference is cached per model fingerprint, batch of latents, labels and σ range.
    """
    why = deterministic_reason(spec)
    if why is not None:
        raise ConfigError(why)
    bench = prepare(
        denoiser,
        seeds=seeds,
        metrics=["ref-error"],
        batch=batch,
        device=device,
        class_label=class_labels,
        ref_steps=ref_steps,
        cache=cache,
    )
    r = run_cell(bench, spec)
    m = r.metrics["ref-error"]
    sig = [s for s in r.plan["sigmas"] if s > 0]
    return ReferenceErrorResult(
        rms=float(m["all"]),
        max_rms=float(m["max_rms"]),
        n=len(bench.seeds),
        nfe=r.nfe,
        solver=r.plan["solver"],
        reference=str(m["reference"]),
        sigma_from=float(sig[0]),
        sigma_to=float(sig[-1]),
        cached=int(m["cached"]),
    )


def fid_result(bench: Bench, result: CellResult, *, shown: str = "mean", metric: str | None = None) -> FIDResult:
    """A cell's Fréchet distance (fid or fd) with its blocks, KID / P&R / IS extras, as `diffbench fid` shows it."""
    name = metric or next(m for m in ("fid", "fd") if m in result.metrics)
    m = result.metrics[name]
    blocks = tuple(float(v) for v in m["blocks"])
    mean, std, lo, ci_lo, ci_hi = block_summary(blocks)
    extras: dict[str, float] = {}
    x = result.metrics
    if "kid" in x:
        extras["kid_mean"], extras["kid_std"] = x["kid"]["all"], x["kid"]["std"]
    if "precision" in x:
        extras["precision"], extras["recall"] = x["precision"]["all"], x["recall"]["all"]
    if "is" in x:
        extras["is_mean"], extras["is_std"] = x["is"]["all"], x["is"]["std"]
    ref = bench.ref
    return FIDResult(
        fid=blocks[0] if len(blocks) == 1 else (mean if shown == "mean" else lo),
        shown="single" if len(blocks) == 1 else shown,
        n=bench.block_size,
        blocks=blocks,
        mean=mean,
        std=std,
        min=lo,
        ci_low=ci_lo,
        ci_high=ci_hi,
        confidence=0.95,
        extractor_id=bench.extractor_id,
        ref=bench.ref_label,
        ref_sha256=bench.ref_sha256,
        ref_n=None if ref is None else ref.n,
        extras=extras,
        samples={**result.provenance, "nfe_counted": result.nfe, "plan": result.plan},
    )


def fid_of_spec(
    model: Any,
    *,
    spec: SamplerSpec,
    seeds: Sequence[int],
    ref: Any,
    extractor: str | FeatureExtractor = INCEPTION_ID,
    weights_path: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    batch: int = 100,
    blocks: int = 1,
    shown: str = "mean",
    class_label: int | None = None,
    kid: bool = False,
    precision_recall: bool = False,
    inception_score: bool = False,
    allow_small_n: bool = False,
    cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> FIDResult:
    """FID (or FD in another feature space) of a sampler spec on a model, straight from the sampler.

    The same cell runner as `diffbench sweep`: a one-cell sweep with the same seeds gives the same number.
    """
    metrics = ["fid" if _is_inception(extractor) else "fd"]
    metrics += ["kid"] * kid + ["pr"] * precision_recall + ["is"] * inception_score
    bench = prepare(
        model,
        seeds=seeds,
        metrics=metrics,
        blocks=blocks,
        batch=batch,
        device=device,
        ref=ref,
        extractor=extractor,
        weights_path=weights_path,
        class_label=class_label,
        allow_small_n=allow_small_n,
        cache=cache,
    )

    def on_batch(p: BatchProgress) -> None:
        if progress is not None:
            progress(p.images_done, p.images_total)

    return fid_result(bench, run_cell(bench, spec, on_batch=on_batch), shown=shown)
