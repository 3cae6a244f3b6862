"""Coverage of diffbench's uncertainty on the built-in model: the old block-mean t-interval against the
pooled value with its delete-one-block jackknife (diffbench.metrics.jackknife), and the paired tests.

Two cells of the default sweep, heun NFE 35 and euler NFE 9 on `digits-edm`, FD in the `digits` feature space
against the training statistics (`digits-stats`), each sampled on R disjoint seed ranges of N seeds
(repetition r uses seeds r·N .. r·N + N − 1, the same seeds for both cells, so they are paired). Each sample
is turned into its 64-d feature vector once; every statistic below is then computed from those features.

Per method and repetition: the reported value, its 95% interval and the paired interval of the difference
euler 9 − heun 35. Across repetitions: the spread (sd) of the value against the mean reported standard error
(half-width / t), the coverage of the value's target by the interval, and how often the paired interval
detects the gap. Targets:
  * value (old: mean of block FDs; new: FD of all N): the mean of that estimator over the R repetitions;
  * FD∞ (the bias-corrected estimate): a two-point 1/n extrapolation (Chong & Forsyth 2020) from the mean
    FD at n = N and the FD of all R·N samples at once, FD∞ ≈ (R·FD_RN − FD_N)/(R − 1), independent of the
    jackknife;
  * paired difference: its mean over the repetitions.

Run (a few minutes on 2 CPU cores; features are cached in the --cache file):
  python benchmarks/coverage.py [--reps 30] [--n 594] [--blocks 22] [--json benchmarks/coverage.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

import diffbench
from diffbench.io import quantize
from diffbench.metrics.extractors import load_extractor
from diffbench.metrics.fid import block_summary
from diffbench.metrics.frechet import FrechetReference
from diffbench.metrics.jackknife import Jackknife, default_blocks, jackknife, paired, t_quantile
from diffbench.metrics.stats import load_statistics
from diffbench.models.registry import fetch_file

HERE = Path(__file__).resolve().parent
CELLS = (("heun", 35), ("euler", 9))


def features(model, extractor, *, solver: str, nfe: int, seeds: list[int], batch: int = 1000) -> np.ndarray:
    """[len(seeds), 64] float64 digits features of the samples (quantized once, as the cell runner does)."""
    out = []
    for i in range(0, len(seeds), batch):
        s = diffbench.sample(model, seeds=seeds[i : i + batch], solver=solver, nfe=nfe, batch=batch, device="cpu")
        out.append(extractor.features(quantize(s.images)).to(torch.float64).numpy())
    return np.concatenate(out)


def fd_of(ref: FrechetReference, f: np.ndarray) -> float:
    return ref.distance(f.mean(axis=0), np.cov(f, rowvar=False))


def new_method(ref: FrechetReference, f: np.ndarray, k: int) -> Jackknife:
    """FD of all N with the delete-one-block jackknife over K consecutive blocks."""
    size = len(f) // k
    loo = [fd_of(ref, np.concatenate([f[: i * size], f[(i + 1) * size :]])) for i in range(k)]
    return jackknife(fd_of(ref, f), loo)


def old_method(ref: FrechetReference, f: np.ndarray, blocks: int = 2) -> tuple[float, float, list[float]]:
    """The pre-jackknife headline: mean of block FDs, half-width of its t-interval, the block FDs."""
    size = len(f) // blocks
    vals = [fd_of(ref, f[i * size : (i + 1) * size]) for i in range(blocks)]
    mean, _, _, lo, hi = block_summary(vals)
    return mean, (hi - lo) / 2, vals


def old_paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """The pre-jackknife paired line: mean block difference and its t half-width."""
    d = np.asarray(a) - np.asarray(b)
    half = t_quantile(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(half)


def summarise(values: np.ndarray, halves: np.ndarray, target: float, df: int) -> dict:
    """Spread against reported SE, and coverage of `target` by value ± half."""
    sd = float(values.std(ddof=1))
    se = float(np.mean(halves) / t_quantile(df))
    return {
        "mean": float(values.mean()),
        "sd_across_reps": sd,
        "mean_reported_se": se,
        "se_over_sd": se / sd if sd > 0 else math.nan,
        "mean_half_width": float(np.mean(halves)),
        # the width measure: the reported 95% half-width against the real spread's (1.96 sd)
        "half_width_over_1.96sd": float(np.mean(halves)) / (1.959964 * sd) if sd > 0 else math.nan,
        "target": float(target),
        "coverage": float(np.mean(np.abs(values - target) <= halves)),
        "lower_bound_below_zero": float(np.mean(values - halves < 0)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--n", type=int, default=594, help="seeds per repetition (the default sweep's 594)")
    ap.add_argument("--blocks", type=int, default=None, help="jackknife blocks (default: diffbench's default)")
    ap.add_argument("--cache", type=Path, default=Path("coverage-features.npz"))
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    k = a.blocks or default_blocks(a.n)
    if k is None:
        raise SystemExit(f"{a.n} has no divisor between 10 and 40: give --blocks")
    seeds = list(range(a.reps * a.n))
    t0 = time.perf_counter()
    feats: dict[str, np.ndarray] = {}
    if a.cache.exists():
        z = np.load(a.cache)
        feats = {key: z[key] for key in z.files if len(z[key]) >= len(seeds)}
    model = diffbench.load("digits-edm")
    extractor = load_extractor("digits")
    for solver, nfe in CELLS:
        key = f"{solver}{nfe}"
        if key not in feats:
            feats[key] = features(model, extractor, solver=solver, nfe=nfe, seeds=seeds)
            np.savez(a.cache, **feats)
    t_sample = time.perf_counter() - t0
    stats = load_statistics(fetch_file("digits-stats")[0])
    ref = FrechetReference(stats.mu, stats.sigma)

    per: dict[str, dict[str, list]] = {}
    for solver, nfe in CELLS:
        key = f"{solver}{nfe}"
        rows: dict[str, list] = {"old": [], "old_half": [], "old_blocks": [], "new": []}
        for r in range(a.reps):
            f = feats[key][r * a.n : (r + 1) * a.n]
            mean, half, blocks = old_method(ref, f)
            rows["old"].append(mean)
            rows["old_half"].append(half)
            rows["old_blocks"].append(blocks)
            rows["new"].append(new_method(ref, f, k))
        per[key] = rows
    out: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU",
        "reps": a.reps,
        "n": a.n,
        "blocks_new": k,
        "blocks_old": 2,
        "sample_seconds": round(t_sample, 1),
        "cells": {},
    }
    for solver, nfe in CELLS:
        key = f"{solver}{nfe}"
        rows = per[key]
        new: list[Jackknife] = rows["new"]
        value = np.array([j.value for j in new])
        halves = np.array([j.half_width for j in new])
        bc = np.array([j.bias_corrected for j in new])
        fd_all = fd_of(ref, feats[key][: a.reps * a.n])
        fd_inf = (a.reps * fd_all - value.mean()) / (a.reps - 1)  # 1/n extrapolation from n = N and n = R·N
        out["cells"][key] = {
            "old_block_mean": summarise(np.array(rows["old"]), np.array(rows["old_half"]), np.mean(rows["old"]), 1),
            "old_covers_fd_of_all_n": float(
                np.mean(np.abs(np.array(rows["old"]) - value.mean()) <= np.array(rows["old_half"]))
            ),
            "new_pooled": summarise(value, halves, value.mean(), k - 1),
            "new_fd_inf": summarise(bc, halves, fd_inf, k - 1),
            "fd_of_all_reps": fd_all,
            "fd_inf_extrapolated": fd_inf,
        }
    a_key, b_key = "euler9", "heun35"
    old_d = [old_paired(x, y) for x, y in zip(per[a_key]["old_blocks"], per[b_key]["old_blocks"])]
    od, oh = np.array([d for d, _ in old_d]), np.array([h for _, h in old_d])
    new_d = [paired(x, y) for x, y in zip(per[a_key]["new"], per[b_key]["new"])]
    nd, nh = np.array([j.value for j in new_d]), np.array([j.half_width for j in new_d])
    out["paired_euler9_minus_heun35"] = {
        "old": {**summarise(od, oh, od.mean(), 1), "detected": float(np.mean(od - oh > 0))},
        "new": {**summarise(nd, nh, nd.mean(), k - 1), "detected": float(np.mean(nd - nh > 0))},
    }
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
