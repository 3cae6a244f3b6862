"""Feature statistics: streaming extraction, reference files (EDM npz, torch-fidelity .pt), their cache."""

from __future__ import annotations

import importlib
import os
import re
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffbench.errors import ConfigError
from diffbench.metrics.extractors import INCEPTION_ID, FeatureExtractor, has_logits
from diffbench.metrics.moments import Moments, empty_moments, merge, moments_of
from diffbench.metrics.sources import ImageSource, file_sha256, iter_uint8, source_sha256

FORMAT = "diffbench-stats-1"
Progress = Callable[[int, int], None]  # (images done, images total)


@dataclass(frozen=True)
class Statistics:
    """μ, Σ of features, with what produced them; `features` is kept only when asked for (KID, P/R)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None  # None when the file does not say (EDM's npz)
    extractor_id: str | None  # None when the file does not say
    resolution: tuple[int, int] | None = None
    source_sha256: str | None = None
    features: np.ndarray | None = None  # [n, D] float32
    logits: np.ndarray | None = None  # [n, K] float32 (Inception Score)
    path: str | None = None
    file_sha256: str | None = None

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.mu.shape[0])


@dataclass(frozen=True)
class Extracted:
    """One pass over images: their moments, and features/logits when kept."""

    moments: Moments
    features: torch.Tensor | None
    logits: torch.Tensor | None


def extract(
    batches: Iterable[torch.Tensor],
    *,
    extractor: FeatureExtractor,
    keep_features: bool = False,
    keep_logits: bool = False,
    progress: Progress | None = None,
    total: int = 0,
) -> Extracted:
    """Features of uint8 NCHW batches folded into float64 moments; memory does not grow with n unless kept."""
    if keep_logits and not has_logits(extractor):
        raise ConfigError(f"feature extractor '{extractor.id}' gives no logits, so no Inception Score")
    acc: Moments | None = None
    feats: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    done = 0
    for x in batches:
        if keep_logits:
            f, lg = extractor.features_and_logits(x)  # type: ignore[attr-defined]
            logits.append(lg.detach().float().cpu())
        else:
            f = extractor.features(x)
        f = f.detach()
        if f.ndim != 2 or f.shape[0] != x.shape[0]:
            raise ConfigError(f"feature extractor '{extractor.id}' gave shape {list(f.shape)} for {x.shape[0]} images")
        acc = moments_of(f) if acc is None else merge(acc, moments_of(f))
        if keep_features:
            feats.append(f.float().cpu())
        done += x.shape[0]
        if progress is not None:
            progress(done, total)
    if acc is None:
        raise ConfigError("no images to extract features from")
    return Extracted(
        moments=acc,
        features=torch.cat(feats) if keep_features else None,
        logits=torch.cat(logits) if keep_logits else None,
    )


def check_enough(n: int, dim: int, *, what: str) -> None:
    """A full-covariance FID needs n > D: Σ from n vectors has rank ≤ n − 1."""
    if n < dim + 1:
        raise ConfigError(
            f"{what}: {n} samples give a rank-deficient {dim}x{dim} covariance; a full-covariance FID needs "
            f"at least {dim + 1} (50000 for paper numbers), or pass --allow-small-n to compute it anyway"
        )


def check_loo_enough(n: int, blocks: int, dim: int) -> None:
    """A full-covariance FD needs more than D samples in every set it is computed on: all n, and each
    leave-one-block-out set of n(K−1)/K (a single block may hold fewer than D samples; issue 20)."""
    loo = n - n // blocks if blocks > 1 else n
    if loo >= dim + 1:
        return
    if blocks == 1:
        check_enough(n, dim, what="samples")
    least = -(-(dim + 1) * blocks // (blocks - 1))  # smallest n with n(K−1)/K ≥ D + 1
    raise ConfigError(
        f"{blocks} seed blocks of {n} seeds leave {loo} samples in each leave-one-block-out set, and a "
        f"full-covariance {dim}x{dim} Fréchet distance needs at least {dim + 1}: use at least {least} seeds "
        f"with {blocks} blocks, or pass --allow-small-n to compute it anyway"
    )


def check_finite(stats: Statistics, *, what: str) -> None:
    """Refuse statistics holding NaN or Inf."""
    if not (np.isfinite(stats.mu).all() and np.isfinite(stats.sigma).all()):
        raise ConfigError(f"{what}: statistics contain NaN or Inf")


# A covariance read from a file must be symmetric and positive semi-definite up to these tolerances,
# relative to its largest variance (float32 storage rounds entries by ~6e-8 of their size).
SYMMETRY_RTOL = 1e-6
PSD_RTOL = 1e-4


def check_covariance(sigma: np.ndarray, *, what: str) -> None:
    """Refuse a sigma that is not symmetric, or whose smallest eigenvalue is below -PSD_RTOL × its scale.

    PSD within tolerance ⇔ Σ + δI is positive definite, δ = PSD_RTOL · max diag Σ: one Cholesky
    (d³/3 flops, a fraction of an eigenvalue solve); the eigenvalues are computed only to word a refusal.
    """
    scale = float(np.abs(np.diagonal(sigma)).max(initial=0.0))
    asym = float(np.abs(sigma - sigma.T).max(initial=0.0))
    if asym > SYMMETRY_RTOL * max(scale, float(np.abs(sigma).max(initial=0.0))):
        raise ConfigError(f"{what}: sigma is not symmetric (largest |sigma - sigma^T| is {asym:.3g})")
    delta = max(PSD_RTOL * scale, np.finfo(np.float64).tiny)
    try:
        np.linalg.cholesky(sigma + delta * np.eye(sigma.shape[0]))
    except np.linalg.LinAlgError:
        lam = np.linalg.eigvalsh(sigma)
        raise ConfigError(
            f"{what}: sigma is not positive semi-definite (smallest eigenvalue {lam[0]:.4g}, "
            f"largest {lam[-1]:.4g}); not a covariance"
        ) from None


def statistics_of(
    source: ImageSource,
    *,
    extractor: FeatureExtractor,
    batch: int = 100,
    keep_features: bool = False,
    keep_logits: bool = False,
    progress: Progress | None = None,
    sha256: str | None = None,
) -> Statistics:
    """Statistics of every image in a source, streamed in batches."""
    ex = extract(
        iter_uint8(source, batch=batch),
        extractor=extractor,
        keep_features=keep_features,
        keep_logits=keep_logits,
        progress=progress,
        total=source.count,
    )
    return statistics_from_extracted(ex, extractor_id=extractor.id, resolution=source.resolution, source_sha256=sha256)


def statistics_from_extracted(
    ex: Extracted, *, extractor_id: str, resolution: tuple[int, int] | None, source_sha256: str | None = None
) -> Statistics:
    """Wrap extracted moments (and kept features) as Statistics."""
    mu, sigma = ex.moments.numpy()
    return Statistics(
        mu=mu,
        sigma=sigma,
        n=ex.moments.n,
        extractor_id=extractor_id,
        resolution=(int(resolution[0]), int(resolution[1])) if resolution is not None else None,
        source_sha256=source_sha256,
        features=ex.features.numpy() if ex.features is not None else None,
        logits=ex.logits.numpy() if ex.logits is not None else None,
    )


def save_statistics(stats: Statistics, path: str | os.PathLike) -> Path:
    """Write statistics as an npz (mu, sigma as EDM's files, plus provenance and optional features)."""
    p = Path(path)
    arrays: dict[str, Any] = {"mu": stats.mu, "sigma": stats.sigma, "format": np.array(FORMAT)}
    if stats.n is not None:
        arrays["n"] = np.array(stats.n, dtype=np.int64)
    if stats.extractor_id is not None:
        arrays["extractor_id"] = np.array(stats.extractor_id)
    if stats.resolution is not None:
        arrays["resolution"] = np.array(stats.resolution, dtype=np.int64)
    if stats.source_sha256 is not None:
        arrays["source_sha256"] = np.array(stats.source_sha256)
    if stats.features is not None:
        arrays["features"] = stats.features
    if stats.logits is not None:
        arrays["logits"] = stats.logits
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp.npz")  # per process: two runs may write one cache file at once
    np.savez(tmp, **arrays)
    os.replace(tmp, p)
    return p


def is_statistics_file(path: str | os.PathLike) -> bool:
    """True for an npz holding mu and sigma (EDM / diffbench) or a torch-fidelity .pt cache."""
    p = Path(path)
    if p.suffix == ".pt":
        return p.is_file()
    if p.suffix != ".npz" or not p.is_file() or not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as zf:
        names = set(zf.namelist())
    return {"mu.npy", "sigma.npy"} <= names or "features.npy" in names and "images.npy" not in names


def load_statistics(path: str | os.PathLike) -> Statistics:
    """Read an EDM npz (mu, sigma), a diffbench stats npz, or a torch-fidelity .pt cache (stats/features)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such statistics file")
    stats = _load_pt(p) if p.suffix == ".pt" else _load_npz(p)
    stats = replace(stats, path=str(p), file_sha256=file_sha256(p))
    _check_shapes(stats, str(p))
    check_finite(stats, what=str(p))
    check_covariance(stats.sigma, what=str(p))
    return stats


def _check_shapes(stats: Statistics, label: str) -> None:
    mu, sigma = stats.mu, stats.sigma
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ConfigError(f"{label}: mu {list(mu.shape)} and sigma {list(sigma.shape)} are not [D] and [D, D]")
    if stats.features is not None and (stats.features.ndim != 2 or stats.features.shape[1] != mu.shape[0]):
        raise ConfigError(f"{label}: features {list(stats.features.shape)} do not match mu {list(mu.shape)}")


def _load_npz(p: Path) -> Statistics:
    try:
        with np.load(p, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{p}: not a readable statistics npz ({exc})") from None
    if "mu" not in d or "sigma" not in d:
        if "features" in d:
            return _from_features(d["features"], extractor_id=None)
        raise ConfigError(f"{p}: no 'mu' and 'sigma' arrays (keys: {', '.join(sorted(d)) or 'none'})")
    return Statistics(
        mu=d["mu"].astype(np.float64),
        sigma=d["sigma"].astype(np.float64),
        n=int(d["n"]) if "n" in d else None,
        extractor_id=str(d["extractor_id"]) if "extractor_id" in d else None,
        resolution=(int(d["resolution"][0]), int(d["resolution"][1])) if "resolution" in d else None,
        source_sha256=str(d["source_sha256"]) if "source_sha256" in d else None,
        features=d.get("features"),
        logits=d.get("logits"),
    )


def _from_features(features: Any, *, extractor_id: str | None) -> Statistics:
    f = torch.as_tensor(np.asarray(features))
    if f.ndim != 2 or f.shape[0] < 2:
        raise ConfigError(f"features must be [N >= 2, D], got {list(f.shape)}")
    mu, sigma = moments_of(f).numpy()
    return Statistics(mu=mu, sigma=sigma, n=f.shape[0], extractor_id=extractor_id, features=f.float().numpy())


def _load_pt(p: Path) -> Statistics:
    # torch-fidelity caches: '<input>-<extractor>-stat-fid-<layer>.pt' ({'mu', 'sigma'} numpy) or
    # '<input>-<extractor>-features-<layer>.pt' (a tensor); loaded without running code
    core = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
    rebuild = core._reconstruct
    # files written under numpy 1.x and 2.x name the same function differently
    safe: list[Any] = [np.ndarray, np.dtype, rebuild, (rebuild, "numpy.core.multiarray._reconstruct")]
    safe += [(rebuild, "numpy._core.multiarray._reconstruct")]
    safe += [type(np.dtype(t)) for t in ("f4", "f8", "i8")]
    try:
        with torch.serialization.safe_globals(safe):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{p}: not a plain torch-fidelity statistics cache ({first})") from None
    layer = re.search(r"-(stat-fid|features)-(\w+)\.pt$", p.name)
    ext = INCEPTION_ID if INCEPTION_ID in p.name and layer and layer.group(2) == "2048" else None
    if isinstance(obj, dict) and "mu" in obj and "sigma" in obj:
        return Statistics(
            mu=np.asarray(obj["mu"], dtype=np.float64),
            sigma=np.asarray(obj["sigma"], dtype=np.float64),
            n=None,
            extractor_id=ext,
        )
    if isinstance(obj, torch.Tensor | np.ndarray):
        return _from_features(obj, extractor_id=ext)
    raise ConfigError(f"{p}: holds {type(obj).__name__}, not {{mu, sigma}} or a feature tensor")


def stats_home() -> Path:
    """Cache folder: $DIFFBENCH_HOME/stats, default ~/.cache/diffbench/stats."""
    home = os.environ.get("DIFFBENCH_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "diffbench"
    return base / "stats"


def cache_path(*, source_sha256: str, extractor_id: str, features: bool) -> Path:
    """Cache file for one (source, extractor) pair; the features variant also serves moments-only requests."""
    safe_id = re.sub(r"[^A-Za-z0-9_.@-]", "_", extractor_id)
    return stats_home() / f"{source_sha256[:32]}-{safe_id}{'-features' if features else ''}.npz"


def cached_statistics(
    source: ImageSource,
    *,
    extractor: FeatureExtractor,
    batch: int = 100,
    keep_features: bool = False,
    keep_logits: bool = False,
    cache: bool = True,
    progress: Progress | None = None,
) -> tuple[Statistics, bool]:
    """Statistics of a source via the cache, so a source is featurised once; returns (stats, cache hit)."""
    sha = source_sha256(source)
    want_features = keep_features or keep_logits
    if cache:
        for feat in (True, False) if not want_features else (True,):
            path = cache_path(source_sha256=sha, extractor_id=extractor.id, features=feat)
            if path.is_file():
                stats = load_statistics(path)
                if (not keep_logits or stats.logits is not None) and stats.n == source.count:
                    return stats, True
    stats = statistics_of(
        source,
        extractor=extractor,
        batch=batch,
        keep_features=want_features,
        keep_logits=keep_logits and has_logits(extractor),
        progress=progress,
        sha256=sha,
    )
    if cache:
        save_statistics(stats, cache_path(source_sha256=sha, extractor_id=extractor.id, features=want_features))
    return stats, False


def moments_blocks(ex_blocks: list[Extracted]) -> Moments:
    """Merge the moments of several blocks into the moments of their union."""
    acc = empty_moments(ex_blocks[0].moments.dim, device=ex_blocks[0].moments.mean.device)
    for ex in ex_blocks:
        acc = merge(acc, ex.moments)
    return acc
