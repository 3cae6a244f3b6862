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
from diffbench.metrics.extractors import INCEPTION_ID, FeatureExtractor, has_logits, load_extractor
from diffbench.metrics.frechet import FrechetReference
from diffbench.metrics.inception_score import inception_score as _inception_score
from diffbench.metrics.kid import kid as _kid
from diffbench.metrics.precision_recall import precision_recall as _precision_recall
from diffbench.metrics.sources import (
    ImageSource,
    batches_from_floats,
    iter_uint8,
    open_source,
    source_from_array,
)
from diffbench.metrics.stats import (
    Extracted,
    Progress,
    Statistics,
    cached_statistics,
    check_enough,
    check_finite,
    extract,
    is_statistics_file,
    load_statistics,
    moments_blocks,
    statistics_from_extracted,
)

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


def block_summary(values: Iterable[float], *, confidence: float = 0.95) -> tuple[float, float, float, float, float]:
    """(mean, std, min, ci_low, ci_high) of block FIDs; t-interval mean ± t_{B−1} s/√B (Student 1908)."""
    from scipy import stats as sps

    v = np.asarray(list(values), dtype=np.float64)
    mean, lo = float(v.mean()), float(v.min())
    if v.size < 2:
        return mean, math.nan, lo, math.nan, math.nan
    std = float(v.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, v.size - 1)) * std / math.sqrt(v.size)
    return mean, std, lo, mean - half, mean + half


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

    # sample side
    if isinstance(src, Statistics):
        if blocks > 1:
            raise ConfigError("seed blocks need the samples themselves, not their statistics")
        if need_features and src.features is None:
            raise ConfigError("KID and precision/recall need sample features, not only their moments (mu, sigma)")
        if inception_score and src.logits is None:
            raise ConfigError("the Inception Score needs the samples' logits, not their statistics")
        check_finite(src, what="samples")
        _check_pair(ref_stats, extractor_id=src.extractor_id, dim=src.dim, resolution=src.resolution, what="FID")
        per_block = [src]
        ex_id = src.extractor_id or ref_stats.extractor_id
    else:
        ext = get_extractor()
        if inception_score and not has_logits(ext):
            raise ConfigError(f"feature extractor '{ext.id}' gives no logits, so no Inception Score")
        known = getattr(src, "resolution", None)
        _check_pair(ref_stats, extractor_id=ext.id, dim=ref_stats.dim, resolution=known, what="FID")
        if not allow_small_n and src is not None:  # fail before featurising anything
            per = "samples" if blocks == 1 else "samples per block"
            check_enough(src.count // blocks, ref_stats.dim, what=per)
        extracted, resolution = _extract_blocks(
            src if src is not None else samples,
            extractor=ext,
            blocks=blocks,
            batch=batch,
            keep_features=need_features,
            keep_logits=inception_score,
            progress=progress,
        )
        per_block = [statistics_from_extracted(e, extractor_id=ext.id, resolution=resolution) for e in extracted]
        for s in per_block:
            check_finite(s, what="samples")
        _check_pair(ref_stats, extractor_id=ext.id, dim=per_block[0].dim, resolution=resolution, what="FID")
        if blocks > 1:  # the union of the blocks for the optional metrics
            union = Extracted(
                moments=moments_blocks(extracted),
                features=torch.cat([e.features for e in extracted]) if need_features else None,
                logits=torch.cat([e.logits for e in extracted]) if inception_score else None,
            )
            all_stats = statistics_from_extracted(union, extractor_id=ext.id, resolution=resolution)
        else:
            all_stats = per_block[0]
        src = all_stats
        ex_id = ext.id
    if not allow_small_n and per_block[0].n is not None:
        check_enough(per_block[0].n, per_block[0].dim, what="samples" if blocks == 1 else "samples per block")

    reference = FrechetReference(ref_stats.mu, ref_stats.sigma)  # factored once for every block
    values = [reference.distance(s.mu, s.sigma) for s in per_block]
    mean, std, lo, ci_lo, ci_hi = block_summary(values, confidence=confidence)
    extras = _optional_metrics(
        src,
        ref_stats,
        kid=kid,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        precision_recall=precision_recall,
        pr_k=pr_k,
        inception_score=inception_score,
    )
    return FIDResult(
        fid=values[0] if blocks == 1 else (mean if shown == "mean" else lo),
        shown="single" if blocks == 1 else shown,
        n=per_block[0].n,
        blocks=tuple(values),
        mean=mean,
        std=std,
        min=lo,
        ci_low=ci_lo,
        ci_high=ci_hi,
        confidence=confidence,
        extractor_id=ex_id,
        ref=str(ref) if isinstance(ref, str | os.PathLike) else ref_stats.path,
        ref_sha256=ref_stats.source_sha256 or ref_stats.file_sha256,
        ref_n=ref_stats.n,
        extras=extras,
    )


def _optional_metrics(
    src: Statistics,
    ref: Statistics,
    *,
    kid: bool,
    kid_subsets: int,
    kid_subset_size: int,
    precision_recall: bool,
    pr_k: int,
    inception_score: bool,
) -> dict[str, float]:
    out: dict[str, float] = {}
    if kid:
        f1, f2 = torch.as_tensor(src.features), torch.as_tensor(ref.features)
        out["kid_mean"], out["kid_std"] = _kid(
            features1=f1, features2=f2, subsets=kid_subsets, subset_size=kid_subset_size
        )
    if precision_recall:
        out["precision"], out["recall"] = _precision_recall(
            real=torch.as_tensor(ref.features), fake=torch.as_tensor(src.features), k=pr_k
        )
    if inception_score:
        out["is_mean"], out["is_std"] = _inception_score(logits=torch.as_tensor(src.logits))
    return out


def _extract_blocks(
    samples: Any,
    *,
    extractor: FeatureExtractor,
    blocks: int,
    batch: int,
    keep_features: bool,
    keep_logits: bool,
    progress: Progress | None,
) -> tuple[list[Extracted], tuple[int, int] | None]:
    """Extract B disjoint consecutive blocks of equal size from a source or a stream of float batches."""
    if isinstance(samples, ImageSource):
        if samples.count % blocks:
            raise ConfigError(f"{samples.count} images do not split into {blocks} equal seed blocks")
        size = samples.count // blocks
        out = []
        for b in range(blocks):
            lo, hi = b * size, (b + 1) * size
            out.append(
                extract(
                    iter_uint8(samples, batch=batch, start=lo, stop=hi),
                    extractor=extractor,
                    keep_features=keep_features,
                    keep_logits=keep_logits,
                    progress=progress,
                    total=size,
                )
            )
        return out, samples.resolution
    if blocks > 1:
        raise ConfigError("seed blocks need a finite image source; pass blocks=1 for a stream")
    stream = _uint8_stream(samples)
    first: list[tuple[int, int]] = []

    def recorded() -> Iterable[torch.Tensor]:
        for x in stream:
            if not first:
                first.append((int(x.shape[2]), int(x.shape[3])))
            elif (int(x.shape[2]), int(x.shape[3])) != first[0]:
                raise ConfigError("image batches of mixed sizes in one sample stream")
            yield x

    ex = extract(
        recorded(),
        extractor=extractor,
        keep_features=keep_features,
        keep_logits=keep_logits,
        progress=progress,
    )
    return [ex], first[0] if first else None


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
