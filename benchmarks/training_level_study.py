"""Which schedule for which network: the training-level study (Wang, He & Tao 2024, arXiv 2406.12839).

Wang, He and Tao analyse training and sampling error together and predict that the best time/variance
schedule depends on how well the network is trained: Song et al.'s exponential (VE, geometric) grid when the
score is well trained, EDM's polynomial rho = 7 grid when it is less so. This script checks that on the
digits-edm@STEP family (one training run's EMA weights after 250, 500, 1000 and 2000 steps):

  snapshot x schedule (edm rho=7, ve geometric, vp, GITS tuned) x NFE (5, 10, 20, 35) x {euler, heun,
  dpmpp-2m}, on held-out evaluation seeds, with the score-error (held-out EDM-weighted denoising loss)
  of each snapshot; and GITS against rho=7 / VE / VP with iPNDM at NFE 5, 10, 20 on digits-edm (@2000).

Every schedule runs on the same sigma range [0.002, 80] (the model's range; only the spacing differs), endpoint
'edm' (a final step x = D(x; 0.002)). Heun spends 2S - 1 NFE, so its budgets 10 and 20 are the reachable
9 and 19 (--nfe-policy floor). Per cell: FD in the digits feature space against the training-split statistics,
the reference-solution error (RMS against a Heun run of --ref-steps steps on EDM's rho = 7 grid from the same
latents, the same final step), the FD of that reference itself (so FD(cell) - FD(ref) is the discretisation's
share). Intervals: 95% delete-one-block jackknife over 10 seed blocks, paired (same seeds, same blocks) for
differences. GITS grids: teacher iPNDM-4 on 61 points, 'dev' cost, coefficient 1.15, calibration seeds
1000000-1000127 (never evaluation seeds), one teacher per snapshot, one DP per (solver, NFE).

  python benchmarks/training_level_study.py            # ~500 seeds a cell; writes training_level_study.{json,md,png}
  python benchmarks/training_level_study.py --quick    # a smoke run (few seeds, two snapshots)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffbench.io import quantize  # noqa: E402
from diffbench.metrics.classifier import digits_classifier  # noqa: E402
from diffbench.metrics.frechet import frechet_distance  # noqa: E402
from diffbench.metrics.jackknife import jackknife, paired  # noqa: E402
from diffbench.metrics.score_error import default_levels, score_error  # noqa: E402
from diffbench.metrics.stats import load_statistics  # noqa: E402
from diffbench.models.builtin import builtin_dir, digits_data  # noqa: E402
from diffbench.models.load import load  # noqa: E402
from diffbench.sampling.gits import cost_matrix, gits_path  # noqa: E402
from diffbench.sampling.run import sample  # noqa: E402
from diffbench.sweep.tune import TunedGrid, grid_points, teacher_trajectory, write_grid  # noqa: E402

SNAPSHOTS = (250, 2000, 500, 1000)  # run order: the extremes first
SCHEDULES = ("edm", "ve", "vp", "gits")
NFES = (5, 10, 20, 35)
SOLVERS = ("euler", "heun", "dpmpp-2m")
LO, HI = 0.002, 80.0
CALIB = list(range(1_000_000, 1_000_128))
BLOCKS = 10


def fd_and_loo(feats: np.ndarray, ref, blocks: int) -> tuple[float, list[float]]:
    """FD of features [N, 64] against reference statistics, and the leave-one-block-out FDs."""

    def fd(f: np.ndarray) -> float:
        return frechet_distance(mu1=f.mean(0), sigma1=np.cov(f, rowvar=False), mu2=ref.mu, sigma2=ref.sigma)

    idx = np.array_split(np.arange(len(feats)), blocks)
    return fd(feats), [fd(np.delete(feats, i, axis=0)) for i in idx]


def rms_and_loo(mse: np.ndarray, blocks: int) -> tuple[float, list[float]]:
    """RMS over all samples (sqrt of the mean per-sample MSE) and its leave-one-block-out values."""
    idx = np.array_split(np.arange(len(mse)), blocks)
    return float(np.sqrt(mse.mean())), [float(np.sqrt(np.delete(mse, i).mean())) for i in idx]


def features(images: torch.Tensor) -> np.ndarray:
    clf = digits_classifier("cpu")
    return clf.features(quantize(images)).double().numpy()


def run_cell(model, seeds, *, solver, nfe, schedule, grid_file=None):
    opts = dict(endpoint="edm", nfe_policy="floor", batch=len(seeds), device="cpu")
    if schedule == "gits":
        s = sample(model, seeds=seeds, solver=solver, nfe=nfe, schedule=f"file:{grid_file}", **opts)
    else:
        extra = {"rho": 7.0} if schedule == "edm" else {}
        s = sample(
            model, seeds=seeds, solver=solver, nfe=nfe, schedule=schedule, sigma_min=LO, sigma_max=HI, **extra, **opts
        )
    return s.images.double(), s.nfe


def study(args) -> dict:
    torch.set_num_threads(args.threads)
    seeds = list(range(args.seeds))
    ref_stats = load_statistics(builtin_dir() / "digits-stats-train.npz")
    held, _ = digits_data().split("heldout")
    tmp = Path(tempfile.mkdtemp(prefix="tls-"))
    out: dict = {
        "config": {
            "seeds": f"0-{args.seeds - 1}",
            "calibration_seeds": f"{CALIB[0]}-{CALIB[-1]}",
            "blocks": BLOCKS,
            "ref_steps": args.ref_steps,
            "sigma_range": [LO, HI],
            "endpoint": "edm",
            "snapshots": list(args.snapshots),
            "schedules": list(SCHEDULES),
            "nfe": list(NFES),
            "solvers": list(SOLVERS),
            "gits": {"teacher": "ipndm order 4, 61 points of rho=7", "cost": "dev", "coeff": 1.15},
            "score_error": {"data": "digits:heldout (297 images)", "levels": 13, "repeats": args.repeats},
        },
        "snapshots": {},
    }
    t_all = time.perf_counter()
    for step in args.snapshots:
        t0 = time.perf_counter()
        name = f"digits-edm@{step}"
        model = load(name)
        se = score_error(model, [torch.from_numpy(held)], sigmas=default_levels(LO, HI, 13), repeats=args.repeats)
        ref = sample(
            model,
            seeds=seeds,
            solver="heun",
            steps=args.ref_steps,
            schedule="edm",
            rho=7.0,
            sigma_min=LO,
            sigma_max=HI,
            batch=len(seeds),
            device="cpu",
        ).images.double()
        fd_ref, fd_ref_loo = fd_and_loo(features(ref), ref_stats, BLOCKS)
        fine, xs, ds = teacher_trajectory(model, seeds=CALIB, points=61, sigma_min=LO, sigma_max=HI)
        cmat = cost_matrix(xs, ds, fine, cost="dev")
        cells = []
        solvers = list(SOLVERS) + (["ipndm"] if step == 2000 else [])
        for solver in solvers:
            nfes = (5, 10, 20) if solver == "ipndm" else NFES
            for nfe in nfes:
                n_points = grid_points(solver, nfe if solver != "heun" else nfe - (nfe % 2 == 0), endpoint="edm")
                path, _ = gits_path(cmat, n_points - 1, coeff=1.15)
                grid = TunedGrid(
                    [float(fine[i]) for i in path],
                    {
                        "method": "gits",
                        "model": name,
                        "solver": solver,
                        "nfe": nfe,
                        "endpoint": "edm",
                        "calibration_seeds": f"{CALIB[0]}-{CALIB[-1]}",
                        "cost": "dev",
                        "coeff": 1.15,
                        "path": path,
                    },
                )
                gfile = write_grid(grid, tmp / f"{step}-{solver}-{nfe}.json")
                for sched in SCHEDULES:
                    x, spent = run_cell(model, seeds, solver=solver, nfe=nfe, schedule=sched, grid_file=gfile)
                    mse = ((x - ref) ** 2).reshape(len(seeds), -1).mean(1).numpy()
                    fd, fd_loo = fd_and_loo(features(x), ref_stats, BLOCKS)
                    rms, rms_loo = rms_and_loo(mse, BLOCKS)
                    cells.append(
                        {
                            "solver": solver,
                            "nfe": nfe,
                            "nfe_spent": spent,
                            "schedule": sched,
                            "fd": fd,
                            "fd_loo": fd_loo,
                            "ref_error": rms,
                            "ref_error_loo": rms_loo,
                            **({"sigmas": grid.sigmas} if sched == "gits" else {}),
                        }
                    )
        out["snapshots"][str(step)] = {
            "model": name,
            "heldout_loss": se.total,
            "score_error": se.to_dict(),
            "fd_reference": fd_ref,
            "fd_reference_loo": fd_ref_loo,
            "cells": cells,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(
            f"{name}: loss {se.total:.4f}, FD(ref) {fd_ref:.3f}, {len(cells)} cells, {time.perf_counter() - t0:.0f}s",
            flush=True,
        )
        if args.json is not None:  # partial results after every snapshot
            args.json.write_text(json.dumps(summarise(out), indent=1) + "\n")
    out["seconds"] = round(time.perf_counter() - t_all, 1)
    return summarise(out)


def _cell(snap: dict, solver: str, nfe: int, sched: str) -> dict | None:
    return next((c for c in snap["cells"] if (c["solver"], c["nfe"], c["schedule"]) == (solver, nfe, sched)), None)


def _diff(a: dict, b: dict, key: str) -> dict:
    j = paired(jackknife(a[key], a[key + "_loo"]), jackknife(b[key], b[key + "_loo"]))
    return {"diff": j.value, "lo": j.ci_low, "hi": j.ci_high, "sig": j.excludes_zero}


def summarise(out: dict) -> dict:
    """Paired differences EDM - VE (and GITS - others) per snapshot, solver and NFE; the flip verdicts."""
    comp = []
    for step, snap in out["snapshots"].items():
        for c in snap["cells"]:
            if c["schedule"] != "edm":
                continue
            for other in ("ve", "vp", "gits"):
                o = _cell(snap, c["solver"], c["nfe"], other)
                if o is None:
                    continue
                comp.append(
                    {
                        "snapshot": int(step),
                        "loss": snap["heldout_loss"],
                        "solver": c["solver"],
                        "nfe": c["nfe"],
                        "a": "edm",
                        "b": other,
                        "fd": _diff(c, o, "fd"),
                        "ref_error": _diff(c, o, "ref_error"),
                    }
                )
    out["comparisons"] = comp
    flips = []
    for solver in sorted({c["solver"] for c in comp}):
        for nfe in sorted({c["nfe"] for c in comp if c["solver"] == solver}):
            rows = sorted(
                (c for c in comp if (c["solver"], c["nfe"], c["b"]) == (solver, nfe, "ve")), key=lambda c: c["snapshot"]
            )
            if len(rows) < 2:
                continue
            for metric in ("fd", "ref_error"):
                signs = [(r["snapshot"], r[metric]["diff"], r[metric]["sig"]) for r in rows]
                better = {("edm" if d < 0 else "ve") for _, d, s in signs if s}
                flips.append(
                    {
                        "solver": solver,
                        "nfe": nfe,
                        "metric": metric,
                        "edm_minus_ve": [[s, round(d, 5), sig] for s, d, sig in signs],
                        "significant_winners": sorted(better),
                        "flip": len(better) == 2,
                    }
                )
    out["flips"] = flips
    return out


def write_md(res: dict, path: Path) -> None:
    cfg = res["config"]
    lines = [
        "# Training-level study: which schedule for which network",
        "",
        "Generated by `benchmarks/training_level_study.py` (see its docstring for the design). "
        f"Seeds {cfg['seeds']} per cell, {cfg['blocks']}-block jackknife 95% intervals, reference Heun "
        f"{cfg['ref_steps']} steps, sigma range {cfg['sigma_range']}, GITS calibration seeds "
        f"{cfg['calibration_seeds']}.",
        "",
        "## Held-out loss per snapshot (score-error, digits:heldout)",
        "",
        "| snapshot | EDM-weighted held-out loss | FD(reference ODE solution) |",
        "|---|---|---|",
    ]
    for _step, snap in sorted(res["snapshots"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {snap['model']} | {snap['heldout_loss']:.4f} | {snap['fd_reference']:.3f} |")
    lines += ["", "## FD per cell (digits features; reference FD above is the floor the ODE itself reaches)", ""]
    for _step, snap in sorted(res["snapshots"].items(), key=lambda kv: int(kv[0])):
        lines += [
            f"### {snap['model']}",
            "",
            "| solver | NFE | " + " | ".join(SCHEDULES) + " | ref-error " + " / ".join(SCHEDULES) + " |",
            "|---|---|" + "---|" * (len(SCHEDULES) + 1),
        ]
        keys = sorted({(c["solver"], c["nfe"]) for c in snap["cells"]}, key=lambda k: (k[0], k[1]))
        for solver, nfe in keys:
            cs = [_cell(snap, solver, nfe, s) for s in SCHEDULES]
            fds = " | ".join(f"{c['fd']:.3f}" if c else "-" for c in cs)
            errs = " / ".join(f"{c['ref_error']:.4f}" if c else "-" for c in cs)
            spent = cs[0]["nfe_spent"] if cs[0] else nfe
            lines.append(f"| {solver} | {spent} | {fds} | {errs} |")
        lines.append("")
    lines += [
        "## EDM (rho=7) minus VE: paired differences by training level",
        "",
        "Negative: EDM's grid better. `*`: the 95% paired interval excludes 0.",
        "",
        "| solver | NFE | metric | "
        + " | ".join(f"@{s}" for s in sorted(int(k) for k in res["snapshots"]))
        + " | significant winners | flip |",
        "|---|---|---|" + "---|" * (len(res["snapshots"]) + 2),
    ]
    for f in res["flips"]:
        vals = " | ".join(f"{d:+.4g}{'*' if s else ''}" for _, d, s in f["edm_minus_ve"])
        lines.append(
            f"| {f['solver']} | {f['nfe']} | {f['metric']} | {vals} | "
            f"{', '.join(f['significant_winners']) or 'none'} | {'yes' if f['flip'] else 'no'} |"
        )
    lines += [
        "",
        "## GITS against rho=7, VE, VP (FD and ref-error, paired)",
        "",
        "| snapshot | solver | NFE | vs | FD(edm) - FD(other) [95%] | ref-error(edm) - ref-error(other) [95%] |",
        "|---|---|---|---|---|---|",
    ]
    for c in res["comparisons"]:
        if c["b"] != "gits":
            continue
        f, r = c["fd"], c["ref_error"]
        lines.append(
            f"| @{c['snapshot']} | {c['solver']} | {c['nfe']} | gits | {f['diff']:+.3f} "
            f"[{f['lo']:+.3f}, {f['hi']:+.3f}] | {r['diff']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}] |"
        )
    path.write_text("\n".join(lines) + "\n")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    solvers = sorted({f["solver"] for f in res["flips"]} - {"ipndm"})
    fig, axes = plt.subplots(1, len(solvers), figsize=(4 * len(solvers), 3.4), squeeze=False)
    for ax, solver in zip(axes[0], solvers):
        for nfe in NFES:
            rows = sorted(
                (c for c in res["comparisons"] if (c["solver"], c["nfe"], c["b"]) == (solver, nfe, "ve")),
                key=lambda c: c["loss"],
            )
            if not rows:
                continue
            x = [r["loss"] for r in rows]
            y = [r["fd"]["diff"] for r in rows]
            e = [[r["fd"]["diff"] - r["fd"]["lo"] for r in rows], [r["fd"]["hi"] - r["fd"]["diff"] for r in rows]]
            ax.errorbar(x, y, yerr=e, marker="o", ms=3, capsize=2, label=f"NFE {rows[0]['nfe']}")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("held-out EDM loss (less trained ->)")
        ax.set_ylabel("FD(edm) - FD(ve)")
        ax.set_title(solver, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=500)
    p.add_argument("--ref-steps", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--snapshots", default=",".join(map(str, SNAPSHOTS)))
    p.add_argument("--quick", action="store_true", help="smoke run: 40 seeds, snapshots 250 and 2000")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "training_level_study")
    p.add_argument("--from-json", action="store_true", help="only rewrite .md/.png from the (partial) .json")
    args = p.parse_args()
    if args.from_json:
        res = summarise(json.loads(args.out.with_suffix(".json").read_text()))
        write_md(res, args.out.with_suffix(".md"))
        plot(res, args.out.with_suffix(".png"))
        return
    args.snapshots = [int(s) for s in args.snapshots.split(",")]
    if args.quick:
        args.seeds, args.snapshots, args.ref_steps = 40, [250, 2000], 32
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.json = args.out.with_suffix(".json")
    res = study(args)
    args.json.write_text(json.dumps(res, indent=1) + "\n")
    write_md(res, args.out.with_suffix(".md"))
    plot(res, args.out.with_suffix(".png"))
    print(f"wrote {args.out}.json/.md/.png in {res.get('seconds', math.nan):.0f}s")


if __name__ == "__main__":
    main()
