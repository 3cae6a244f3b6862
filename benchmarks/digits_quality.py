"""Quality of the built-in digits models, measured as FD in the digits feature space (never FID).

Everything goes through diffbench's public API: diffbench.load, diffbench.sample, diffbench.fid with
extractor="digits" against the shipped statistics of the training split (registry entry `digits-stats`), and
diffbench.metrics.classifier.sample_accuracy for the conditional model.

  * floor: FD of the 297 held-out real images (never trained on) against the training-split statistics;
  * each model: FD of B seed blocks of 297 samples each (the floor's size), mean and spread over the blocks;
  * solvers: euler, heun, dpmpp-2m, unipc (and dpmpp-3m, ipndm) at several NFE on digits-edm;
  * digits-edm-cond: classifier accuracy of its samples per class (labels cycle 0..9 over the seeds);
  * a sample grid (PNG, upscaled with nearest-neighbour so the 8x8 digits are visible).

Run: python benchmarks/digits_quality.py [--blocks 4] [--json benchmarks/digits_quality.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import diffbench
from diffbench.errors import DiffbenchError
from diffbench.metrics.classifier import digits_classifier, sample_accuracy
from diffbench.metrics.frechet import frechet_distance
from diffbench.metrics.stats import load_statistics
from diffbench.models.registry import fetch_file

N = 297  # = the held-out split, so the floor and every FD use the same number of images
HERE = Path(__file__).resolve().parent


def fd_blocks(model, *, blocks: int, solver: str, nfe: int, labels=None, seed0: int = 0) -> dict:
    """FD (digits features) against the training statistics of `blocks` seed blocks of N samples each."""
    seeds = list(range(seed0, seed0 + blocks * N))
    t0 = time.perf_counter()
    s = diffbench.sample(model, seeds=seeds, solver=solver, nfe=nfe, batch=1000, device="cpu", class_labels=labels)
    t_sample = time.perf_counter() - t0
    r = diffbench.fid(s.images, ref=train_stats(), extractor=digits_classifier(), blocks=blocks, allow_small_n=True)
    return {
        "solver": solver,
        "nfe": s.nfe,
        "fd_mean": r.mean,
        "fd_std": r.std,
        "fd_blocks": list(r.blocks),
        "sample_seconds": round(t_sample, 2),
        "samples": s,
    }


def train_stats():
    """The shipped statistics of the training split (registry entry digits-stats, sha256 verified)."""
    return load_statistics(fetch_file("digits-stats")[0])


def floor() -> dict:
    """FD of the held-out real images against the training statistics (same N as each sample block)."""
    from diffbench.models.builtin import digits_data

    images, _ = digits_data().split("heldout")
    fd = diffbench.fid(torch.from_numpy(images), ref=train_stats(), extractor="digits", allow_small_n=True).fid
    train = train_stats()
    held = load_statistics(fetch_file("digits-stats-heldout")[0])
    fd_shipped = frechet_distance(mu1=held.mu, sigma1=held.sigma, mu2=train.mu, sigma2=train.sigma)
    # what N training images themselves score: the finite-N bias alone, with no train/held-out gap (the
    # classifier was trained on the training split, so its features of those images sit closer to the reference)
    train_images, _ = digits_data().split("train")
    rng = np.random.default_rng(0)
    fd_train = [
        diffbench.fid(
            torch.from_numpy(train_images[rng.choice(len(train_images), N, replace=False)]),
            ref=train_stats(),
            extractor="digits",
            allow_small_n=True,
        ).fid
        for _ in range(4)
    ]
    return {
        "fd": fd,
        "fd_from_shipped_stats": float(fd_shipped),
        "n": len(images),
        "fd_train_subsets": fd_train,
        "fd_train_subsets_mean": float(np.mean(fd_train)),
    }


def save_grid(images: torch.Tensor, path: Path, *, columns: int, scale: int = 4) -> None:
    from PIL import Image

    from diffbench.io import grid_image, quantize

    u8 = torch.nn.functional.pad(quantize(images), (1, 1, 1, 1), value=96)  # a grey frame between the tiles
    img = grid_image(u8, columns=columns)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


def save_grids(path: Path) -> None:
    """64 digits-edm samples (heun, NFE 35, seeds 0-63), and ten per class from digits-edm-cond (rows 0..9)."""
    grid = diffbench.sample(diffbench.load("digits-edm"), seeds=range(64), solver="heun", nfe=35, device="cpu")
    save_grid(grid.images, path, columns=8)
    cond = diffbench.load("digits-edm-cond")
    labels = torch.arange(100) // 10
    cgrid = diffbench.sample(cond, seeds=range(100), class_labels=labels, solver="heun", nfe=35, device="cpu")
    save_grid(cgrid.images, path.with_name(path.stem + "_cond.png"), columns=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=2, help="seed blocks of 297 samples per cell (same seeds everywhere)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=HERE / "digits_quality.json")
    p.add_argument("--grid", type=Path, default=HERE / "digits_grid.png")
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 9, 15, 35])
    p.add_argument("--grid-only", action="store_true", help="only write the sample grids")
    p.add_argument("--solvers", nargs="+", default=["euler", "heun", "dpmpp-2m", "unipc"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    out: dict = {
        "machine": {
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "n_per_block": N,
        "blocks": args.blocks,
    }
    if args.grid_only:
        return save_grids(args.grid)
    out["floor"] = floor()
    print(f"floor: FD (digits features) of {N} held-out real images vs train stats = {out['floor']['fd']:.3f}")
    print(f"FD of {N} random training images vs train stats (4 draws): {out['floor']['fd_train_subsets_mean']:.3f}")
    clf = digits_classifier()
    from diffbench.models.builtin import digits_data

    ho_images, ho_labels = digits_data().split("heldout")
    out["classifier_heldout_accuracy"] = sample_accuracy(
        torch.from_numpy(ho_images), ho_labels, classifier=clf
    ).accuracy
    print(f"classifier held-out accuracy {out['classifier_heldout_accuracy']:.4f}")

    edm = diffbench.load("digits-edm")
    # cost of one network evaluation per image
    x = torch.randn(1000, 1, 8, 8)
    with torch.no_grad():
        edm(x, torch.ones(1000))
        t0 = time.perf_counter()
        for _ in range(3):
            edm(x, torch.ones(1000))
    per_eval = (time.perf_counter() - t0) / 3 / 1000
    out["seconds_per_image_eval"] = per_eval
    out["parameters"] = sum(p.numel() for p in edm.parameters())
    print(f"digits-edm: {out['parameters']} parameters, {per_eval * 1e6:.0f} us per image per evaluation")

    sweep = []
    print(f"\n{'solver':<10}" + "".join(f"{'NFE ' + str(n):>16}" for n in args.nfe))
    for solver in args.solvers:
        row = []
        for nfe in args.nfe:
            try:
                r = fd_blocks(edm, blocks=args.blocks, solver=solver, nfe=nfe)
            except DiffbenchError as exc:  # e.g. a budget this solver cannot hit exactly
                row.append(f"{'-':>16}")
                sweep.append({"solver": solver, "nfe": nfe, "error": str(exc)})
                continue
            r.pop("samples")
            sweep.append(r)
            row.append(f"{r['fd_mean']:>9.3f} ±{r['fd_std']:.3f}")
        print(f"{solver:<10}" + "".join(row), flush=True)
    out["sweep_digits_edm"] = sweep
    at35 = [r for r in sweep if r.get("nfe") == 35 and "fd_mean" in r]
    best = min(at35, key=lambda r: r["fd_mean"])
    out["best_at_35"] = {"solver": best["solver"], "fd_mean": best["fd_mean"], "fd_std": best["fd_std"]}
    ratio = best["fd_mean"] / out["floor"]["fd"]
    print(f"\nbest at NFE 35: {best['solver']} FD {best['fd_mean']:.3f} = {ratio:.2f}x floor")

    early = diffbench.load("digits-edm-early")
    out["early"] = {}
    for solver in ("heun", best["solver"]):
        r = fd_blocks(early, blocks=args.blocks, solver=solver, nfe=35)
        r.pop("samples")
        out["early"][solver] = r
        print(f"digits-edm-early {solver} NFE 35: FD {r['fd_mean']:.3f} ±{r['fd_std']:.3f}")

    cond = diffbench.load("digits-edm-cond")
    n_cond = args.blocks * N
    labels = torch.arange(n_cond) % 10
    r = fd_blocks(cond, blocks=args.blocks, solver=best["solver"], nfe=35, labels=labels)
    acc = sample_accuracy(r.pop("samples").images, labels, classifier=clf)
    r["accuracy"] = acc.as_dict()
    out["cond"] = r
    print(
        f"digits-edm-cond {best['solver']} NFE 35: FD {r['fd_mean']:.3f} ±{r['fd_std']:.3f}, "
        f"classifier accuracy {acc.accuracy:.3f} per class "
        + " ".join(f"{k}:{v:.2f}" for k, v in acc.per_class.items())
    )

    save_grids(args.grid)
    out["total_seconds"] = round(time.perf_counter() - t_start, 1)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.json} and {args.grid} in {out['total_seconds']:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
