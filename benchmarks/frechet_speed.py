"""Fréchet distance at Inception's width (2048-d): diffbench's factored path against scipy's sqrtm path.

Two covariances are built from 2·d random features each (a full-rank, non-commuting pair, like two
Inception statistics files). Timed, each once, on the same pair:

- scipy sqrtm: tr sqrtm(Σ1 Σ2), the pytorch-fid / torch-fidelity formula (one d×d Schur decomposition);
- two eigh: the previous diffbench path, Σ1^½ by eigh and then eigvalsh(Σ1^½ Σ2 Σ1^½);
- frechet_distance: Cholesky of Σ2 (cheap) and one eigvalsh of Fᵀ Σ1 F;
- per block: FrechetReference.distance with the reference factored once (what `fid --blocks B` pays
  per block after the first).

    python benchmarks/frechet_speed.py            # d = 2048
    python benchmarks/frechet_speed.py --dim 512
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import scipy
import scipy.linalg

from diffbench.metrics.frechet import FrechetReference, frechet_distance, sqrt_psd


def covariance(d: int, rng: np.random.Generator) -> np.ndarray:
    """Covariance of 2·d features: standard normals mixed by a random matrix with a decaying spectrum."""
    mix = rng.standard_normal((d, d)) * (np.arange(1, d + 1) ** -0.5)[None, :]
    feats = rng.standard_normal((2 * d, d)) @ mix
    return np.cov(feats, rowvar=False)


def scipy_sqrtm_fd(mu1, s1, mu2, s2) -> float:
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def two_eigh_fd(mu1, s1, mu2, s2) -> float:
    """The previous diffbench path: a full eigh for Σ1^½, then eigvalsh of Σ1^½ Σ2 Σ1^½."""
    r = sqrt_psd(s1)
    m = r @ s2 @ r
    lam = np.linalg.eigvalsh(0.5 * (m + m.T))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


def timed(fn, *args) -> tuple[float, float]:
    t = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--blocks", type=int, default=2, help="seed blocks for the `fid --blocks` totals")
    args = ap.parse_args()
    d = args.dim
    rng = np.random.default_rng(0)
    s1, s2 = covariance(d, rng), covariance(d, rng)
    mu1, mu2 = rng.standard_normal(d) * 0.1, rng.standard_normal(d) * 0.1
    print(
        f"d = {d}; numpy {np.__version__}, scipy {scipy.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )

    ref, t_scipy = timed(scipy_sqrtm_fd, mu1, s1, mu2, s2)
    old, t_old = timed(two_eigh_fd, mu1, s1, mu2, s2)
    new, t_new = timed(lambda: frechet_distance(mu1=mu1, sigma1=s1, mu2=mu2, sigma2=s2))
    reference, t_factor = timed(FrechetReference, mu2, s2)
    block, t_block = timed(reference.distance, mu1, s1)

    rows = [
        ("scipy sqrtm(Σ1Σ2)", ref, t_scipy),
        ("two eigh (previous)", old, t_old),
        ("frechet_distance", new, t_new),
        ("per block, reference cached", block, t_block),
    ]
    print(f"{'path':30s} {'FD':>16s} {'rel. to scipy':>14s} {'seconds':>9s}")
    for name, value, seconds in rows:
        print(f"{name:30s} {value:16.10f} {abs(value - ref) / abs(ref):14.2e} {seconds:9.2f}")
    B = args.blocks
    print(
        f"fid --blocks {B} (Fréchet part only): previous {B * t_old:.2f} s, now {t_factor + B * t_block:.2f} s "
        f"(reference factored once in {t_factor:.2f} s); scipy sqrtm path {B * t_scipy:.2f} s"
    )


if __name__ == "__main__":
    main()
