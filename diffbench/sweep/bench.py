"""The prepared bench: what every cell of a sweep shares (model on its device, extractor, reference, seeds,
metrics), loaded once and checked against the metric set before anything is sampled."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from diffbench.denoiser import Denoiser
from diffbench.errors import ConfigError
from diffbench.metrics.extractors import INCEPTION_ID, FeatureExtractor, has_logits, load_extractor
from diffbench.metrics.reference_error import model_fingerprint
from diffbench.metrics.registry import METRICS, MetricContext, all_metrics, get_metric, parse_metrics
from diffbench.metrics.stats import Statistics, check_enough, check_finite, check_loo_enough
from diffbench.sampling.run import resolve_device
from diffbench.sampling.spec import SamplerSpec

all_metrics()  # the built-in metrics registered, so METRICS (the live registry) lists them

__all__ = ["Bench", "prepare", "default_metrics", "is_exact_model", "model_sha256", "deterministic_reason", "METRICS"]


def is_exact_model(model: Any) -> bool:
    """True for models with exact moments and exact samples (the analytic mixtures)."""
    return all(callable(getattr(model, a, None)) for a in ("mean", "covariance", "sample_data"))


def default_metrics(model: Any, *, ref: Any = None, extractor: str | FeatureExtractor | None = None) -> tuple[str, ...]:
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


def deterministic_reason(spec: SamplerSpec) -> str | None:
    """Why ref-error and ref-fd do not apply to this spec (a stochastic sampler), or None."""
    from diffbench.sampling.solvers import get_solver

    info = get_solver(spec.solver)
    stochastic = [k for k in ("S_churn", "churn_per_step", "eta") if (getattr(spec, k, None) or 0) > 0]
    if info.stochastic or stochastic:
        why = f"{', '.join(stochastic)} > 0" if stochastic else f"solver '{info.name}' is stochastic"
        return f"the reference ODE solution (ref-error, ref-fd) needs a deterministic sampler ({why})"
    return None


@dataclass
class Bench:
    """What a sweep loads once: the model on its device, the extractor, reference statistics, seeds, metrics."""

    model: Denoiser
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
    eval_classifier: str | None = None  # class-accuracy / inv-prob: a user's clean classifier (module:factory)
    save_images: Callable[[Any, torch.Tensor, list[int], torch.Tensor | None], None] | None = None
    batch_auto: bool = False  # --batch auto: each cell runs at the size that fits (sampling/autobatch.py)
    kl_data: str | None = None  # the data set of prior-kl (digits-data or an image source)

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

    def context(self, *, sample_dim: int = 0) -> MetricContext:
        """What the bench's metrics read besides their accumulators (one per cell: its meta and memo are fresh)."""
        return MetricContext(
            block_size=self.block_size,
            n_all=len(self.seeds),
            ref=self.ref,
            extractor_id=self.extractor_id,
            model=self.model,
            sample_dim=sample_dim,
            allow_small_n=self.allow_small_n,
            class_label=self.class_label,
            options={
                "kid_subsets": self.kid_subsets,
                "kid_subset_size": self.kid_subset_size,
                "pr_k": self.pr_k,
                "ref_steps": self.ref_steps,
                **({} if self.eval_classifier is None else {"eval_classifier": self.eval_classifier}),
                "kl_data": self.kl_data,
            },
        )

    def metric_options(self) -> dict[str, Any]:
        """The options of the bench's metrics that change their numbers (part of a cell's identity)."""
        ctx = self.context()
        out: dict[str, Any] = {}
        for name in self.metrics:
            out.update(get_metric(name).options(ctx))
        return out


def prepare(
    model: Any,
    *,
    seeds: Sequence[int],
    metrics: Sequence[str] | None = None,
    blocks: int | None = 1,
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
    eval_classifier: str | None = None,
    kl_data: str | None = None,
    steered: bool = False,
) -> Bench:
    """Load what every cell shares and check the metric set against the model before sampling anything.

    model: a Denoiser or a name for diffbench.load. blocks: seed blocks of the jackknife (None: about 20, a
    divisor of the number of seeds, see resolve_blocks). ref: statistics file, image source or Statistics (needed
    by the metrics that need ref-moments or ref-features). Raises ConfigError for metrics the model or the
    reference cannot give. eval_classifier: class-accuracy / inv-prob under a user's clean classifier
    (package.module:factory) instead of the built-in digits one; refused unless one of them is asked for.
    class_label on an unconditional model: accepted when something reads it, class-accuracy / inv-prob or
    classifier guidance in some cell (steered=True); the network ignores it, and they check its range.
    """
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
    blocks = resolve_blocks(len(seeds), blocks)
    if batch < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch}")
    names = parse_metrics(metrics) if metrics is not None else default_metrics(model, ref=ref, extractor=extractor)
    label_dim = int(getattr(model, "label_dim", 0) or 0)
    reads_class = steered or bool({"class-accuracy", "inv-prob"} & set(names))
    if steered and not label_dim and class_label is None:
        raise ConfigError("classifier guidance on an unconditional model steers toward a class: give --class C")
    if class_label is not None and not label_dim and reads_class:
        if class_label < 0:
            raise ConfigError(f"--class must be >= 0, got {class_label}")
    elif class_label is not None and not 0 <= class_label < max(label_dim, 1):
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
        eval_classifier=eval_classifier,
    )
    bench.kl_data = _kl_data(names, kl_data, bench.model_name)
    wanted = [get_metric(m) for m in names]
    if kl_data is not None and "prior-kl" not in names:
        raise ConfigError("--kl-data applies to the metric prior-kl, which is not asked for")
    if eval_classifier is not None and not {"class-accuracy", "inv-prob"} & set(names):
        raise ConfigError("--eval-classifier applies to the metrics class-accuracy and inv-prob; neither is asked for")
    exact = [m.name for m in wanted if "exact" in m.needs]
    if exact and not is_exact_model(model):
        raise ConfigError(f"metric {exact[0]} needs an analytic model with exact moments; {bench.model_name} has none")
    feat = [m for m in wanted if {"features", "logits", "reference-features"} & set(m.needs)]
    if feat:
        _prepare_features(bench, feat, model, ref=ref, extractor=extractor, weights_path=weights_path)
    for m in wanted:  # each metric's own refusals (too few samples per block, ...)
        if m.state.name in ("features", "data") and bench.blocks > 1 and bench.block_size < 2:
            raise ConfigError(  # every block's value needs a covariance of the block's samples
                f"{m.name} on {bench.blocks} blocks of 1 seed: a block's covariance needs at least 2 samples; "
                f"pass --blocks K with K dividing {len(bench.seeds)} and at most {len(bench.seeds) // 2}"
            )
        if m.check is not None:
            m.check(bench.context())
    return bench


DIGITS_MODELS = ("digits-edm", "digits-edm-early", "digits-edm-cond")  # trained on digits-data's train split


def _kl_data(names: Sequence[str], kl_data: str | None, model_name: str) -> str | None:
    """The data set of prior-kl: as given, else digits-data for the built-in digits models, else one error."""
    if "prior-kl" not in names:
        return kl_data
    if kl_data is not None:
        return kl_data
    if model_name in DIGITS_MODELS:
        return "digits-data"
    raise ConfigError("prior-kl needs the data set the model was trained on: give --kl-data (images or digits-data)")


def resolve_blocks(n: int, blocks: int | None) -> int:
    """The number of seed blocks K for n seeds: `blocks` when it divides n, else (None) about 20, a divisor of
    n (diffbench.metrics.jackknife.default_blocks); one block below 10 seeds. Never drops a seed: n without a
    divisor near 20, a K above n or one that does not divide n is one clear error."""
    from diffbench.metrics.jackknife import default_blocks

    if blocks is None:
        k = default_blocks(n)
        if k is not None:
            return k
        if n < 10:
            return 1
        some = [d for d in range(2, n) if n % d == 0][:6]
        hint = f" (divisors of {n}: {', '.join(map(str, some))})" if some else f" ({n} is prime: --blocks 1 or {n})"
        raise ConfigError(
            f"{n} seeds have no divisor between 10 and 40 to split them into about 20 equal seed blocks; "
            f"pass --blocks K with K dividing {n}{hint}, or change --seeds"
        )
    if blocks < 1:
        raise ConfigError(f"blocks must be >= 1, got {blocks}")
    if blocks > n:
        raise ConfigError(f"--blocks {blocks} is larger than the {n} seeds: at most {n} (one seed per block)")
    if n % blocks:
        raise ConfigError(f"{n} seeds do not split into {blocks} equal seed blocks")
    return blocks


def _prepare_features(
    bench: Bench,
    feat: list[Any],
    model: Any,
    *,
    ref: Any,
    extractor: str | FeatureExtractor | None,
    weights_path: str | os.PathLike | None,
) -> None:
    """Load the extractor and the reference statistics of the feature metrics, and check them."""
    from diffbench.denoiser import sample_shape
    from diffbench.metrics.fid import _as_source
    from diffbench.metrics.stats import cached_statistics

    if extractor is not None and not _is_inception(extractor):
        inception_only = [m.name for m in feat if m.space == "inception"]
        if inception_only:
            raise ConfigError(
                f"{inception_only[0]} is the Fréchet distance in Inception space; use fd with --extractor"
            )
    named = [m.name for m in feat if m.space == "named"]
    if named and extractor is None:
        raise ConfigError(f"metric {named[0]} needs --extractor (a feature space); fid uses Inception-v3")
    ex_name = INCEPTION_ID if extractor is None else extractor
    ex = (
        ex_name
        if not isinstance(ex_name, str)
        else load_extractor(ex_name, device=bench.device, weights_path=weights_path)
    )
    bench.extractor = ex
    logit_metrics = [m.name for m in feat if "logits" in m.needs]
    if logit_metrics and not has_logits(ex):
        raise ConfigError(f"feature extractor '{ex.id}' gives no logits, so no Inception Score")
    needs_ref = [m for m in feat if "ref-moments" in m.needs or "ref-features" in m.needs]
    if needs_ref:
        if ref is None:
            raise ConfigError(f"metric {needs_ref[0].name} needs reference statistics (--ref)")
        keep = any("ref-features" in m.needs for m in needs_ref)
        if isinstance(ref, Statistics):
            stats = ref
        else:
            src = _as_source(ref)
            if src is None:
                raise ConfigError("ref must be a statistics file or an image folder, zip or npz")
            if isinstance(src, Statistics):
                stats = src
            else:
                stats, _ = cached_statistics(src, extractor=ex, batch=100, keep_features=keep)
        label = str(ref) if isinstance(ref, str | os.PathLike) else (stats.path or "reference")
        check_finite(stats, what=label)
        if stats.extractor_id is not None and stats.extractor_id != ex.id:
            raise ConfigError(
                f"reference statistics come from extractor '{stats.extractor_id}', samples from '{ex.id}'"
            )
        if keep and stats.features is None:
            raise ConfigError(
                f"{label} holds only moments (mu, sigma): KID and precision/recall need the reference "
                "features; compute them with `diffbench stats SOURCE --keep-features`"
            )
        if not bench.allow_small_n:
            if stats.n is not None:
                check_enough(stats.n, stats.dim, what=label)
            check_loo_enough(len(bench.seeds), bench.blocks, stats.dim)
        bench.ref, bench.ref_label = stats, label
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


def _is_inception(extractor: Any) -> bool:
    return str(extractor if isinstance(extractor, str) else getattr(extractor, "id", "")).startswith(INCEPTION_ID)
