"""FID by the papers' protocol, with seed-block confidence intervals; optional KID, precision/recall, IS."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from diffbench.errors import ConfigError
from diffbench.io import quantize
from diffbench.metrics.accumulators import MomentsAcc
from diffbench.metrics.extractors import INCEPTION_ID, FeatureExtractor, has_logits, load_extractor
from diffbench.metrics.registry import (
    FEATURE_MOMENTS,
    Batch,
    MetricContext,
    Scoring,
    block_summary,
    featurize,
)
from diffbench.metrics.sources import (
    ImageSource,
    batches_from_floats,
    iter_uint8,
    open_source,
    source_from_array,
)
from diffbench.metrics.stats import (
    Progress,
    Statistics,
    cached_statistics,
    check_enough,
    check_finite,
    check_loo_enough,
    is_statistics_file,
    load_statistics,
)

__all__ = ["FIDResult", "Comparison", "fid", "compare_fid", "fid_result_of", "block_summary", "RETIRED_SHOWN"]

RETIRED_SHOWN = (
    "the headline is now the FID of all N samples with a jackknife interval over the seed blocks; "
    "a mean or min of per-block FIDs is no longer shown (the per-block values stay in .blocks)"
)


@dataclass(frozen=True)
class FIDResult:
    """FID of all N samples; over K seed blocks its delete-one-block jackknife SE, interval and the bias-corrected
    estimate at infinite n (diffbench.metrics.jackknife); the per-block FIDs (each at n = N/K) are kept."""

    fid: float  # the FID of all N samples
    n: int | None  # N, the samples behind `fid`; None when a statistics file does not say
    blocks: tuple[float, ...]  # per-block FIDs, each at n = block_n
    block_n: int | None
    loo: tuple[float, ...]  # the K leave-one-block-out FIDs (empty for one block)
    se: float  # jackknife standard error (nan for one block)
    ci_low: float  # fid ± t_{K−1}·se
    ci_high: float
    fid_inf: float  # jackknife bias-corrected estimate of the FID at infinite n (nan for one block)
    inf_low: float
    inf_high: float
    confidence: float
    extractor_id: str | None
    ref: str | None
    ref_sha256: str | None
    ref_n: int | None
    # optional metrics: kid_mean, kid_std, precision, recall, is_mean, is_std
    extras: dict[str, float] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)  # provenance of samples drawn from a sampler spec

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (nan becomes None)."""
        d = asdict(self)
        d["blocks"], d["loo"] = list(self.blocks), list(self.loo)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


@dataclass(frozen=True)
class Comparison:
    """Difference of two FIDs (a − b), its standard error and interval, which test ran, and if it beats noise."""

    difference: float
    stderr: float
    df: float
    t: float
    significant: bool
    verdict: str
    test: str = ""  # 'paired jackknife over K shared seed blocks' or 'unpaired ...'
    ci_low: float = math.nan
    ci_high: float = math.nan


def _same_seeds(a: FIDResult, b: FIDResult) -> bool:
    sa, sb = a.samples.get("seeds"), b.samples.get("seeds")
    return sa is not None and sa == sb


def compare_fid(a: FIDResult, b: FIDResult, *, paired: bool | None = None, confidence: float = 0.95) -> Comparison:
    """a − b. Paired (both drawn from the same seeds in the same K blocks; paired=None decides from the samples'
    provenance): the jackknife of FID_a − FID_b over the shared blocks. Otherwise unpaired: the two jackknife
    SEs combined, √(SE_a² + SE_b²), with Welch–Satterthwaite degrees of freedom (Welch 1947). `test` says which."""
    from scipy import stats as sps

    from diffbench.metrics.jackknife import jackknife
    from diffbench.metrics.jackknife import paired as paired_jk

    if a.n != b.n:
        raise ConfigError(f"cannot compare FIDs at different n ({a.n} vs {b.n}): FID is biased by n")
    if a.extractor_id != b.extractor_id:
        raise ConfigError(f"cannot compare FIDs from different extractors ({a.extractor_id} vs {b.extractor_id})")
    if a.ref_sha256 != b.ref_sha256:
        raise ConfigError("cannot compare FIDs against different reference statistics")
    diff = a.fid - b.fid
    ka, kb = len(a.loo), len(b.loo)
    if ka < 2 or kb < 2:
        return Comparison(
            diff, math.nan, math.nan, math.nan, False, "unknown: needs at least 2 seed blocks on each side", "none"
        )
    if paired is None:
        paired = ka == kb and _same_seeds(a, b)
    if paired:
        if ka != kb:
            raise ConfigError(f"a paired comparison needs the same seed blocks on both sides ({ka} vs {kb})")
        ja = jackknife(a.fid, a.loo, confidence=confidence)
        jb = jackknife(b.fid, b.loo, confidence=confidence)
        d = paired_jk(ja, jb)
        se, df, lo, hi = d.se, float(ka - 1), d.ci_low, d.ci_high
        test = f"paired jackknife over {ka} shared seed blocks"
    else:
        va, vb = a.se**2, b.se**2
        se = math.sqrt(va + vb)
        # Welch–Satterthwaite degrees of freedom, K−1 per side
        df = (va + vb) ** 2 / (va**2 / (ka - 1) + vb**2 / (kb - 1)) if se > 0 else float(ka + kb - 2)
        half = float(sps.t.ppf(0.5 + confidence / 2, df)) * se
        lo, hi = diff - half, diff + half
        test = "unpaired (the samples do not share seeds): jackknife SEs, Welch–Satterthwaite df"
    t = diff / se if se > 0 else (math.inf if diff else 0.0)
    significant = not (lo <= 0.0 <= hi)
    if significant:
        verdict = f"{'b' if diff > 0 else 'a'} is better: the {confidence:.0%} interval of the difference excludes 0"
    else:
        verdict = f"within noise: the {confidence:.0%} interval of the difference contains 0"
    return Comparison(diff, se, df, t, significant, verdict, test, lo, hi)


def _as_source(samples: Any) -> ImageSource | Statistics | None:
    """A statistics object, an image source, or None for a stream of batches."""
    if isinstance(samples, Statistics | ImageSource):
        return samples
    if isinstance(samples, str | os.PathLike):
        if is_statistics_file(samples):
            return load_statistics(samples)
        return open_source(samples)
    if isinstance(samples, np.ndarray):
        return source_from_array(samples)
    if isinstance(samples, torch.Tensor):
        x = samples if samples.dtype == torch.uint8 else quantize(samples)
        return source_from_array(x)
    return None


def _check_pair(ref: Statistics, *, extractor_id: str | None, dim: int, resolution: Any, what: str) -> None:
    if ref.dim != dim:
        raise ConfigError(f"{what}: reference has {ref.dim}-d features, samples {dim}-d: different extractors")
    if ref.extractor_id is not None and extractor_id is not None and ref.extractor_id != extractor_id:
        raise ConfigError(
            f"{what}: reference statistics come from extractor '{ref.extractor_id}', samples from '{extractor_id}'"
        )
    if ref.resolution is not None and resolution is not None and tuple(ref.resolution) != tuple(resolution):
        r, s = ref.resolution, resolution
        raise ConfigError(f"{what}: reference images are {r[1]}x{r[0]}, samples {s[1]}x{s[0]}: different resolution")


def _ref_label(ref: Any) -> str:
    return str(ref) if isinstance(ref, str | os.PathLike) else "reference"


def fid_result_of(
    results: dict[str, dict[str, Any]],
    *,
    metric: str,
    n: int | None,
    extractor_id: str | None,
    ref: str | None,
    ref_sha256: str | None,
    ref_n: int | None,
    confidence: float = 0.95,
    samples: dict[str, Any] | None = None,
) -> FIDResult:
    """The FIDResult of finished metric results (fid or fd, with KID / P&R / IS as extras): both paths' last step."""
    from diffbench.metrics.jackknife import jackknife

    r = results[metric]
    blocks = tuple(float(v) for v in r["blocks"])
    loo = tuple(float(v) for v in r.get("loo") or ())
    j = jackknife(float(r["value"]), loo, confidence=confidence)
    inf = (j.bias_corrected, j.bc_low, j.bc_high) if len(loo) >= 2 else (math.nan,) * 3
    extras: dict[str, float] = {}
    if "kid" in results:
        extras["kid_mean"], extras["kid_std"] = results["kid"]["value"], results["kid"]["std"]
    if "precision" in results:
        extras["precision"], extras["recall"] = results["precision"]["value"], results["recall"]["value"]
    if "is" in results:
        extras["is_mean"], extras["is_std"] = results["is"]["value"], results["is"]["std"]
    for name, key in (("class-accuracy", "class_accuracy"), ("inv-prob", "inv_prob")):  # issue 21, fid --model
        if name in results:
            x = results[name]
            extras[key] = float(x["value"])
            if x.get("ci_low") is not None and len(x.get("loo") or ()) > 1:
                extras[f"{key}_low"], extras[f"{key}_high"] = float(x["ci_low"]), float(x["ci_high"])
            extras.update({f"{key}_{q}": float(x[q]) for q in ("q50", "q90", "q99") if q in x})
    return FIDResult(
        fid=j.value,
        n=n,
        blocks=blocks,
        block_n=r.get("n") if n is not None else None,
        loo=loo,
        se=j.se,
        ci_low=j.ci_low,
        ci_high=j.ci_high,
        fid_inf=inf[0],
        inf_low=inf[1],
        inf_high=inf[2],
        confidence=confidence,
        extractor_id=extractor_id,
        ref=ref,
        ref_sha256=ref_sha256,
        ref_n=ref_n,
        extras=extras,
        samples=samples or {},
    )


def fid(
    samples: Any,
    *,
    ref: Any,
    extractor: str | FeatureExtractor = INCEPTION_ID,
    weights_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    batch: int = 100,
    blocks: int = 1,
    shown: str | None = None,
    confidence: float = 0.95,
    kid: bool = False,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    precision_recall: bool = False,
    pr_k: int = 3,
    inception_score: bool = False,
    allow_small_n: bool = False,
    cache: bool = True,
    progress: Progress | None = None,
) -> FIDResult:
    """FID of samples against reference statistics (Heusel et al. 2017; EDM's protocol, REFERENCE §5).

    samples: an image folder / zip / npz path, a statistics file (mu, sigma), uint8 NHWC array, a float or
    uint8 image tensor, or an iterable of float [-1, 1] image batches. ref: a statistics file or image source.
    Scored by the registered metrics' accumulators (diffbench.metrics.registry), fed batch by batch and
    finished as the sweep's cell runner does. blocks: K disjoint consecutive blocks; the value is the FID of
    all N, its interval the delete-one-block jackknife. shown: retired (a ConfigError says why).
    Raises ConfigError for unusable input.
    """
    if shown is not None:
        raise ConfigError(f"shown is retired: {RETIRED_SHOWN}")
    if blocks < 1:
        raise ConfigError(f"blocks must be >= 1, got {blocks}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    need_features = kid or precision_recall
    src = _as_source(samples)
    ref_src = _as_source(ref)
    if ref_src is None:
        raise ConfigError("ref must be a statistics file or an image folder, zip or npz")

    ex_obj: FeatureExtractor | None = extractor if not isinstance(extractor, str) else None

    def get_extractor() -> FeatureExtractor:
        nonlocal ex_obj
        if ex_obj is None:
            ex_obj = load_extractor(str(extractor), device=device, weights_path=weights_path)
        return ex_obj

    # reference side
    if isinstance(ref_src, Statistics):
        ref_stats = ref_src
    else:
        ref_stats, _ = cached_statistics(
            ref_src, extractor=get_extractor(), batch=batch, keep_features=need_features, cache=cache
        )
    check_finite(ref_stats, what=_ref_label(ref))
    if need_features and ref_stats.features is None:
        raise ConfigError(
            f"{_ref_label(ref)} holds only moments (mu, sigma): KID and precision/recall need the reference "
            "features; compute them with `diffbench stats SOURCE --keep-features`"
        )
    if not allow_small_n and ref_stats.n is not None:
        check_enough(ref_stats.n, ref_stats.dim, what=_ref_label(ref))

    ex_name = extractor if isinstance(extractor, str) else extractor.id
    names = ["fid" if str(ex_name).startswith(INCEPTION_ID) else "fd"]
    names += ["kid"] * kid + ["precision", "recall"] * precision_recall + ["is"] * inception_score
    options = {"kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size, "pr_k": pr_k}

    # sample side: batches of uint8 images (or one block given by its statistics) into the accumulators
    if isinstance(src, Statistics):
        if blocks > 1:
            raise ConfigError("seed blocks need the samples themselves, not their statistics")
        if need_features and src.features is None:
            raise ConfigError("KID and precision/recall need sample features, not only their moments (mu, sigma)")
        if inception_score and src.logits is None:
            raise ConfigError("the Inception Score needs the samples' logits, not their statistics")
        check_finite(src, what="samples")
        _check_pair(ref_stats, extractor_id=src.extractor_id, dim=src.dim, resolution=src.resolution, what="FID")
        n = src.n
        ex_id = src.extractor_id or ref_stats.extractor_id
        ctx = MetricContext(block_size=n or 0, n_all=n or 0, ref=ref_stats, extractor_id=ex_id, options=options)
        scoring = Scoring(names, ctx, blocks=1)
        scoring.blocks[0][FEATURE_MOMENTS.name] = MomentsAcc.of_statistics(src.mu, src.sigma)
        given = Batch(
            features=None if src.features is None else torch.as_tensor(src.features),
            logits=None if src.logits is None else torch.as_tensor(src.logits),
        )
        scoring.consume(0, given, skip=(FEATURE_MOMENTS.name,))
    else:
        ext = get_extractor()
        if inception_score and not has_logits(ext):
            raise ConfigError(f"feature extractor '{ext.id}' gives no logits, so no Inception Score")
        known = getattr(src, "resolution", None)
        _check_pair(ref_stats, extractor_id=ext.id, dim=ref_stats.dim, resolution=known, what="FID")
        if src is not None and blocks > src.count:
            raise ConfigError(f"--blocks {blocks} is larger than the {src.count} images: at most {src.count}")
        if src is not None and src.count % blocks:
            raise ConfigError(f"{src.count} images do not split into {blocks} equal seed blocks")
        if not allow_small_n and src is not None:  # fail before featurising anything
            check_loo_enough(src.count, blocks, ref_stats.dim)
        if src is None and blocks > 1:
            raise ConfigError("seed blocks need a finite image source; pass blocks=1 for a stream")
        size = src.count // blocks if src is not None else 0
        ex_id = ext.id
        ctx = MetricContext(block_size=size, n_all=size * blocks, ref=ref_stats, extractor_id=ex_id, options=options)
        scoring = Scoring(names, ctx, blocks=blocks)
        resolution = _feed_blocks(
            scoring, src if src is not None else samples, extractor=ext, batch=batch, progress=progress
        )
        moments = [b[FEATURE_MOMENTS.name].m for b in scoring.blocks]
        n = moments[0].n
        ctx.block_size, ctx.n_all = n, sum(m.n for m in moments)
        for m in moments:
            mu, sigma = m.numpy()
            check_finite(Statistics(mu=mu, sigma=sigma, n=m.n, extractor_id=ex_id), what="samples")
        _check_pair(ref_stats, extractor_id=ex_id, dim=moments[0].dim, resolution=resolution, what="FID")
        n = ctx.n_all
    if not allow_small_n and n is not None:
        check_enough(n, ref_stats.dim, what="samples")
    return fid_result_of(
        scoring.finish(),
        metric=names[0],
        n=n,
        extractor_id=ex_id,
        ref=str(ref) if isinstance(ref, str | os.PathLike) else ref_stats.path,
        ref_sha256=ref_stats.source_sha256 or ref_stats.file_sha256,
        ref_n=ref_stats.n,
        confidence=confidence,
    )


def _feed_blocks(
    scoring: Scoring, samples: Any, *, extractor: FeatureExtractor, batch: int, progress: Progress | None
) -> tuple[int, int] | None:
    """Feature batches of B disjoint consecutive equal blocks of a source (or of one stream of float batches)
    into the scoring's accumulators; returns the images' resolution (H, W)."""
    logits = scoring.needs("logits")
    if isinstance(samples, ImageSource):
        size = samples.count // len(scoring.blocks)
        parts: list[tuple[int, Iterable[torch.Tensor], int]] = [
            (b, iter_uint8(samples, batch=batch, start=b * size, stop=(b + 1) * size), size)
            for b in range(len(scoring.blocks))
        ]
        resolution = samples.resolution
    else:
        parts = [(0, _uint8_stream(samples), 0)]
        resolution = None
    for b, batches, total in parts:
        done = 0
        for x in batches:
            hw = (int(x.shape[2]), int(x.shape[3]))
            if resolution is None:
                resolution = hw
            elif not isinstance(samples, ImageSource) and hw != resolution:
                raise ConfigError("image batches of mixed sizes in one sample stream")
            one = Batch(uint8=x)
            featurize(one, extractor, logits=logits, ref_dim=None if scoring.ctx.ref is None else scoring.ctx.ref.dim)
            scoring.consume(b, one)
            done += x.shape[0]
            if progress is not None:
                progress(done, total)
        if done == 0:
            raise ConfigError("no images to extract features from")
    return resolution


def _uint8_stream(samples: Any) -> Iterable[torch.Tensor]:
    try:
        it = iter(samples)
    except TypeError:
        raise ConfigError(f"cannot read samples from {type(samples).__name__}") from None
    for x in it:
        x = getattr(x, "images", x)  # sampler records carry .images
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ConfigError("a sample stream must yield image tensors [B, C, H, W]")
        yield x if x.dtype == torch.uint8 else next(iter(batches_from_floats([x])))
