"""The metric registry: name -> one object that says which way is better, what it needs, its per-block
accumulator, how that consumes a batch, its value over any set of blocks, and its options.

Both scoring paths loop over the requested metrics through `Scoring`: the sweep's cell runner (samples
straight from a sampler) and `diffbench fid` on files (uint8 images read from disk). Each builds `Batch`es,
feeds them into one block's accumulators, and finishes the same way: a metric's value on the union of all
blocks (the headline), on every block, and on every leave-one-block-out set (`Metric.value` over a list of
block states), which give the jackknife interval (diffbench.metrics.jackknife). Metrics never import
diffbench.sampling; what needs the sampler (the reference ODE solution of ref-error and ref-fd) arrives on the
batch, filled in by the cell runner.

Adding a metric: one module that defines its value function and calls `register_metric(Metric(...))`, and
one import line in `_load_builtin`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from diffbench.errors import ConfigError, UnknownNameError
from diffbench.metrics.accumulators import MomentsAcc, RowsAcc, as_float

if TYPE_CHECKING:
    from diffbench.metrics.stats import Statistics

BETTER = ("lower", "higher")
# what a metric needs; the scoring paths provide each (and refuse a metric whose need they cannot meet):
NEEDS = (
    "features",  # extractor features of the uint8 images (batch.features)
    "logits",  # extractor logits (batch.logits)
    "ref-moments",  # reference statistics mu, sigma (ctx.ref)
    "ref-features",  # reference features kept (ctx.ref.features)
    "samples",  # the float samples themselves (batch.images): only where they come from a sampler
    "exact",  # an analytic model with exact moments and samples (ctx.model), fed the float samples
    "reference",  # the reference ODE solution of the same latents (batch.ref_sq_errors; sampler side)
    "start",  # the cell's starting sigma and distribution (ctx.start; sampler side)
    "reference-features",  # extractor features of the reference solution's images (batch.ref_features; sampler side)
)
SPACES = ("any", "inception", "named")  # which feature space a features metric accepts
ALIASES = {"pr": ("precision", "recall")}  # one request, two columns


class Accumulator(Protocol):
    """A per-block accumulator: checkpointable as named numpy arrays."""

    def state(self) -> dict[str, np.ndarray]: ...

    def load(self, s: dict[str, np.ndarray]) -> None: ...


@dataclass
class Batch:
    """One batch of samples as the metrics see it; the cell runner and the file path fill the same fields."""

    images: torch.Tensor | None = None  # float sampler output [B, ...], unclipped; None for image files
    seeds: list[int] = field(default_factory=list)
    labels: torch.Tensor | None = None  # integer class indices [B] or None
    uint8: torch.Tensor | None = None  # quantized once (EDM rule), NCHW, CPU
    features: torch.Tensor | None = None  # extractor features [B, D]
    logits: torch.Tensor | None = None  # extractor logits [B, K], float32
    ref_sq_errors: torch.Tensor | None = None  # per-sample MSE to the reference solution [B], float64
    ref_cached: bool = False  # the reference came from the cache
    ref_features: torch.Tensor | None = None  # extractor features of the quantized reference solution [B, D]


@dataclass
class MetricContext:
    """What accumulators and values read besides their states, fixed for one cell or one set of files."""

    block_size: int  # samples per block (n of each block value; a leave-one-out set holds n_all − block_size)
    n_all: int  # samples over all blocks
    ref: Statistics | None = None  # reference statistics (mu, sigma; features when kept)
    extractor_id: str | None = None
    model: Any = None  # the model of an exact metric (mean(), covariance(), sample_data())
    sample_dim: int = 0  # numbers per sample (flattened), for the exact metrics' accumulators
    allow_small_n: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # kid_subsets, kid_subset_size, pr_k, ref_steps, ...
    meta: dict[str, Any] = field(default_factory=dict)  # written while consuming (ref_method), checkpointed
    memo: dict[Any, Any] = field(default_factory=dict)  # values shared by metrics over one state (P and R)
    start: Any = None  # the cell's start {"sigma": float, "prior": obj with log_prob(x, sigma)}; sampler side
    class_label: int | None = None  # the fixed intended class (--class), if any

    @property
    def loo_n(self) -> int:
        """Samples behind the smallest set a value is computed on: a leave-one-block-out set, N(K−1)/K (N for
        one block). Sample-size checks apply to it, not to a block (issue 20)."""
        return self.n_all - self.block_size if 0 < self.block_size < self.n_all else self.n_all


@dataclass(frozen=True)
class State:
    """A per-block accumulator that metrics read: its name, factory and how it consumes a batch.

    Metrics naming one State share one accumulator (fid and fd the feature moments; kid, precision and
    recall the feature rows), so a batch is folded in once.
    """

    name: str
    new: Callable[[MetricContext], Accumulator]
    consume: Callable[[Any, Batch], None]


@dataclass(frozen=True)
class Metric:
    """One registry entry (DESIGN.md, "Metric"): value(states, ctx) is the metric of the union of the blocks
    whose states are given -> (value, extras); extras of the union go into the result beside the value."""

    name: str
    better: str  # lower | higher
    needs: tuple[str, ...]  # from NEEDS
    description: str
    state: State
    value: Callable[[Sequence[Any], MetricContext], tuple[float, dict[str, Any]]]
    options: Callable[[MetricContext], dict[str, Any]] = field(default=lambda ctx: {})
    check: Callable[[MetricContext], None] | None = None  # refuse before sampling (e.g. too few samples)
    space: str = "any"  # features metrics: any space, Inception only (fid), or a named extractor (fd)
    infinite_n: bool = False  # biased like c/n (FD): results add the jackknife estimate at infinite n (`<name>-inf`)


METRICS: dict[str, Metric] = {}
_STATES: dict[str, State] = {}


def register_metric(metric: Metric) -> Metric:
    """Add a metric; a duplicate name, an unknown need or direction, or a second State under one name is refused."""
    if metric.name in METRICS or metric.name in ALIASES:
        raise ValueError(f"metric '{metric.name}' is already registered")
    if metric.better not in BETTER:
        raise ValueError(f"metric '{metric.name}': better must be one of {BETTER}, got '{metric.better}'")
    unknown = [n for n in metric.needs if n not in NEEDS]
    if unknown or not metric.needs:
        raise ValueError(f"metric '{metric.name}': needs must be some of {NEEDS}, got {metric.needs}")
    if metric.space not in SPACES:
        raise ValueError(f"metric '{metric.name}': space must be one of {SPACES}, got '{metric.space}'")
    known = _STATES.get(metric.state.name)
    if known is not None and known is not metric.state:
        raise ValueError(f"metric '{metric.name}': another accumulator is already named '{metric.state.name}'")
    _STATES[metric.state.name] = metric.state
    METRICS[metric.name] = metric
    return metric


def get_metric(name: str) -> Metric:
    """The registered metric `name`; an unknown name is one clear error."""
    _load_builtin()
    if name not in METRICS:
        raise UnknownNameError("metric", name, [*METRICS, *ALIASES])
    return METRICS[name]


def all_metrics() -> list[Metric]:
    """Every registered metric, in registration order."""
    _load_builtin()
    return list(METRICS.values())


def parse_metrics(names: Iterable[str]) -> tuple[str, ...]:
    """Metric names in request order, `pr` expanded; an unknown one is one clear error."""
    _load_builtin()
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


def _load_builtin() -> None:
    from diffbench.metrics import frechet  # noqa: F401, I001  (modules register on import, in listing order)
    from diffbench.metrics import kid  # noqa: F401
    from diffbench.metrics import precision_recall  # noqa: F401
    from diffbench.metrics import inception_score  # noqa: F401
    from diffbench.metrics import reference_error  # noqa: F401
    from diffbench.metrics import distribution  # noqa: F401
    from diffbench.metrics import class_prob  # noqa: F401
    from diffbench.metrics import prior_kl  # noqa: F401
    from diffbench.metrics import reference_fd  # noqa: F401


# ---- the inputs several metrics share --------------------------------------------------------------------


def _feature_moments(ctx: MetricContext) -> MomentsAcc:
    return MomentsAcc(ctx.ref.dim if ctx.ref is not None else 0)


def _add_features(acc: MomentsAcc, batch: Batch) -> None:
    assert batch.features is not None
    acc.add(batch.features)


def _add_feature_rows(acc: RowsAcc, batch: Batch) -> None:
    assert batch.features is not None
    acc.add(batch.features.float())


def _add_logits(acc: RowsAcc, batch: Batch) -> None:
    assert batch.logits is not None
    acc.add(batch.logits.float())


FEATURE_MOMENTS = State("features", _feature_moments, _add_features)  # float64 moments of the features
FEATURE_ROWS = State("feature_rows", lambda ctx: RowsAcc(np.dtype(np.float32)), _add_feature_rows)
LOGITS = State("logits", lambda ctx: RowsAcc(np.dtype(np.float32)), _add_logits)


def featurize(batch: Batch, extractor: Any, *, logits: bool, ref_dim: int | None) -> None:
    """Fill batch.features (and batch.logits) from batch.uint8 with the extractor; shapes checked."""
    x = batch.uint8
    assert x is not None
    if logits:
        f, lg = extractor.features_and_logits(x)
        batch.logits = lg.detach().float().cpu()
    else:
        f = extractor.features(x)
    f = f.detach()
    if f.ndim != 2 or f.shape[0] != x.shape[0]:
        raise ConfigError(f"feature extractor '{extractor.id}' gave shape {list(f.shape)} for {x.shape[0]} images")
    if ref_dim is not None and f.shape[1] != ref_dim:
        raise ConfigError(f"reference has {ref_dim}-d features, samples {f.shape[1]}-d: different extractors")
    batch.features = f


# ---- scoring: the loop both paths share ------------------------------------------------------------------


def block_summary(values: Iterable[float], *, confidence: float = 0.95) -> tuple[float, float, float, float, float]:
    """(mean, std, min, ci_low, ci_high) of block values; t-interval mean ± t_{B−1} s/√B (Student 1908).

    The interval of results stored before the jackknife; new results carry the jackknife (block_result)."""
    from scipy import stats as sps

    v = np.asarray(list(values), dtype=np.float64)
    mean, lo = float(v.mean()), float(v.min())
    if v.size < 2:
        return mean, math.nan, lo, math.nan, math.nan
    std = float(v.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, v.size - 1)) * std / math.sqrt(v.size)
    return mean, std, lo, mean - half, mean + half


INTERVAL = "jackknife"  # what a result's ci_low/ci_high are (results stored before it have no "interval")


def block_result(
    metric: Metric, blocks: list[float], value: float, loo: list[float], ctx: MetricContext
) -> dict[str, Any]:
    """A metric's result dict (issue 20): `value` is the metric of all N samples; its interval the delete-one-
    block jackknife over the K blocks (value ± t_{K−1}·SE from the K leave-one-out values `loo`, Efron & Stein
    1981); `blocks` the per-block values, each at n = N/K (`n` the block size, `n_all` = N). A metric with
    `infinite_n` adds `inf` (the jackknife bias-corrected estimate at infinite n, Quenouille 1956) with its
    interval. With one block there is no interval: only the value."""
    from diffbench.metrics.jackknife import jackknife

    out: dict[str, Any] = {"value": as_float(value), "all": as_float(value)}
    out["blocks"] = [as_float(v) for v in blocks]
    if len(loo) >= 2:
        j = jackknife(value, loo)
        out.update(
            {
                "loo": [as_float(v) for v in loo],
                "se": as_float(j.se),
                "ci_low": as_float(j.ci_low),
                "ci_high": as_float(j.ci_high),
                "interval": INTERVAL,
            }
        )
        if metric.infinite_n:
            out.update(
                {"inf": as_float(j.bias_corrected), "inf_low": as_float(j.bc_low), "inf_high": as_float(j.bc_high)}
            )
    out.update({"n": ctx.block_size, "n_all": ctx.n_all, "better": metric.better})
    return out


class Scoring:
    """The requested metrics of one cell (or one set of files): one accumulator set per block, fed batch by
    batch, checkpointable, finished into one result dict per metric.

    not_applicable: {metric: why} for metrics that give no number here (ref-error of a stochastic sampler):
    they get no accumulator and finish as {"value": None, "note": why}.
    """

    def __init__(
        self,
        metrics: Sequence[str],
        ctx: MetricContext,
        *,
        blocks: int,
        not_applicable: Mapping[str, str] | None = None,
    ):
        self.names = tuple(metrics)
        self.metrics = [get_metric(m) for m in self.names]
        self.ctx = ctx
        self.not_applicable = dict(not_applicable or {})
        self.active = [m for m in self.metrics if m.name not in self.not_applicable]
        self.states_used = list({m.state.name: m.state for m in self.active}.values())
        self.blocks: list[dict[str, Any]] = [{s.name: s.new(ctx) for s in self.states_used} for _ in range(blocks)]

    def needs(self, need: str) -> bool:
        """True when any metric being computed needs `need` (see NEEDS)."""
        return any(need in m.needs for m in self.active)

    def consume(self, block: int, batch: Batch, *, skip: Iterable[str] = ()) -> None:
        """Fold one batch into block `block`'s accumulators (each shared accumulator once), but those in skip."""
        leave = set(skip)
        for s in self.states_used:
            if s.name not in leave:
                s.consume(self.blocks[block][s.name], batch)

    def state(self) -> dict[str, dict[str, np.ndarray]]:
        """Every block's accumulators as named arrays ({"b<i>.<state>": arrays})."""
        return {f"b{i}.{k}": acc.state() for i, accs in enumerate(self.blocks) for k, acc in accs.items()}

    def load(self, s: Mapping[str, dict[str, np.ndarray]]) -> None:
        """Inverse of state(); a checkpoint of other metrics is one clear error."""
        for i, accs in enumerate(self.blocks):
            for k, acc in accs.items():
                if f"b{i}.{k}" not in s:
                    raise ConfigError("the checkpoint does not match this cell's metrics")
                acc.load(s[f"b{i}.{k}"])

    def finish(self) -> dict[str, dict[str, Any]]:
        """Each metric's value of all blocks, per block and without each block (the jackknife), in request order."""
        out: dict[str, dict[str, Any]] = {}
        ctx = self.ctx
        for m in self.metrics:
            if m.name in self.not_applicable:
                note = self.not_applicable[m.name]
                out[m.name] = {"value": None, "better": m.better, "note": note, "blocks": [], "n": ctx.block_size}
                out[m.name]["n_all"] = ctx.n_all
                continue
            states = [b[m.state.name] for b in self.blocks]
            per = [m.value([s], ctx) for s in states]
            union, extras = per[0] if len(states) == 1 else m.value(states, ctx)
            loo = [m.value(states[:i] + states[i + 1 :], ctx)[0] for i in range(len(states))] if len(states) > 1 else []
            out[m.name] = {**block_result(m, [v for v, _ in per], union, loo, ctx), **extras}
        return out

    def options(self) -> dict[str, Any]:
        """The options of the requested metrics that change their numbers (part of a cell's identity)."""
        out: dict[str, Any] = {}
        for m in self.metrics:
            out.update(m.options(self.ctx))
        return out
