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
    is_statistics_file,
    load_statistics,
)

__all__ = ["FIDResult", "Comparison", "fid", "compare_fid", "fid_result_of", "block_summary", "SHOWN"]

SHOWN = ("mean", "min")


@dataclass(frozen=True)
class FIDResult:
    """FID with its n and, over B seed blocks, mean / std / min and a t-interval (EDM reports min of 3)."""

    fid: float  # the headline: the single FID, or the blocks' `shown` statistic
    shown: str  # single | mean | min
    n: int | None  # samples behind each FID value (per block); None when a statistics file does not say
    blocks: tuple[float, ...]
    mean: float
    std: float  # sample standard deviation over blocks (nan for one block)
    min: float
    ci_low: float
    ci_high: float
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
        d["blocks"] = list(self.blocks)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


@dataclass(frozen=True)
class Comparison:
    """Difference of two FIDs (a − b), its standard error from the block spread, and if it beats noise."""

    difference: float
    stderr: float
    df: float
    t: float
    significant: bool
    verdict: str


def compare_fid(a: FIDResult, b: FIDResult, *, confidence: float = 0.95) -> Comparison:
    """a − b with a Welch t-test over block FIDs (Welch 1947): significant = it exceeds the block noise."""
    from scipy import stats as sps

    if a.n != b.n:
        raise ConfigError(f"cannot compare FIDs at different n ({a.n} vs {b.n}): FID is biased by n")
    if a.extractor_id != b.extractor_id:
        raise ConfigError(f"cannot compare FIDs from different extractors ({a.extractor_id} vs {b.extractor_id})")
    if a.ref_sha256 != b.ref_sha256:
        raise ConfigError("cannot compare FIDs against different reference statistics")
    diff = a.mean - b.mean
    ba, bb = len(a.blocks), len(b.blocks)
    if ba < 2 or bb < 2:
        return Comparison(
            diff, math.nan, math.nan, math.nan, False, "unknown: needs at least 2 seed blocks on each side"
        )
    va, vb = a.std**2 / ba, b.std**2 / bb
    se = math.sqrt(va + vb)
    # Welch–Satterthwaite degrees of freedom
    df = (va + vb) ** 2 / (va**2 / (ba - 1) + vb**2 / (bb - 1)) if se > 0 else float(ba + bb - 2)
    t = diff / se if se > 0 else (math.inf if diff else 0.0)
    crit = float(sps.t.ppf(0.5 + confidence / 2, df))
    significant = abs(t) > crit
    if significant:
        verdict = f"{'b' if diff > 0 else 'a'} is better: |Δ| exceeds the {confidence:.0%} block noise"
    else:
        verdict = f"within noise: |Δ| below the {confidence:.0%} block noise"
    return Comparison(diff, se, df, t, significant, verdict)


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
    shown: str,
    n: int | None,
    extractor_id: str | None,
    ref: str | None,
    ref_sha256: str | None,
    ref_n: int | None,
    confidence: float = 0.95,
    samples: dict[str, Any] | None = None,
) -> FIDResult:
    """The FIDResult of finished metric results (fid or fd, with KID / P&R / IS as extras): both paths' last step."""
    blocks = tuple(float(v) for v in results[metric]["blocks"])
    mean, std, lo, ci_lo, ci_hi = block_summary(blocks, confidence=confidence)
    extras: dict[str, float] = {}
    if "kid" in results:
        extras["kid_mean"], extras["kid_std"] = results["kid"]["all"], results["kid"]["std"]
    if "precision" in results:
        extras["precision"], extras["recall"] = results["precision"]["all"], results["recall"]["all"]
    if "is" in results:
        extras["is_mean"], extras["is_std"] = results["is"]["all"], results["is"]["std"]
    return FIDResult(
        fid=blocks[0] if len(blocks) == 1 else (mean if shown == "mean" else lo),
        shown="single" if len(blocks) == 1 else shown,
        n=n,
        blocks=blocks,
        mean=mean,
        std=std,
        min=lo,
        ci_low=ci_lo,
        ci_high=ci_hi,
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
    shown: str = "mean",
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
    finished as the sweep's cell runner does. Raises ConfigError for unusable input.
    """
    if blocks < 1:
        raise ConfigError(f"blocks must be >= 1, got {blocks}")
    if shown not in SHOWN:
        raise ConfigError(f"shown must be one of {', '.join(SHOWN)}, got '{shown}'")
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
        if not allow_small_n and src is not None:  # fail before featurising anything
            per = "samples" if blocks == 1 else "samples per block"
            check_enough(src.count // blocks, ref_stats.dim, what=per)
        if src is not None and src.count % blocks:
            raise ConfigError(f"{src.count} images do not split into {blocks} equal seed blocks")
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
    if not allow_small_n and n is not None:
        check_enough(n, ref_stats.dim, what="samples" if blocks == 1 else "samples per block")
    return fid_result_of(
        scoring.finish(),
        metric=names[0],
        shown=shown,
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
