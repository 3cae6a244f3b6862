"""Classifier-free guidance on the built-in `digits-edm-cond` at exact counted NFE (issue 21), through the CLI.

Three sweeps, each `diffbench sweep digits-edm-cond ... --metric fd,class-accuracy,inv-prob` over the same
seeds (so every cell uses the same latents and labels):

  A. the issue's command as written: heun, --guidance 1,1.5,2,3,4 --nfe 9,17,35 (guided cells cost 2 per
     evaluation, so their totals are even and every guided heun cell at these odd budgets is skipped);
  A2. the same with --nfe-policy nearest: each guided cell runs at the nearest budget it can spend exactly
     (10, 18, 34), its counted NFE shown;
  B. the same weights at budgets every weight can spend exactly: dpmpp-2m (1 evaluation per step) at
     --nfe 10,18,34, so W = 1 runs 10/18/34 steps and W > 1 runs 5/9/17 guided steps: equal counted NFE;
  C. the guidance interval at NFE 17-19 (dpmpp-2m): a small grid of (LO, HI) in sigma at W = 2 and 3 against
     guidance everywhere (B's cells at NFE 18), equal counted NFE (an interval buys more steps; each interval
     reaches only some of these budgets exactly, the others are listed as skipped);
  D. classifier-free guidance as EDM2 does it, the reference a separate unconditional model (--guide
     digits-edm) instead of the null label, at NFE 18.
  E. autoguidance (Karras et al. 2024): the reference the same conditional model less trained (--guide
     digits-edm-cond-early, EMA at step 400 of 2000, given the same label), at NFE 18, against B's
     classifier-free cells at NFE 18: each at its best W (lowest FD), same counted NFE.
  F. classifier guidance (Dhariwal & Nichol 2021) with the built-in noise-conditional classifier
     (--classifier-guidance S --classifier digits-noisy-classifier) at NFE 18: each evaluation costs 2 (the
     denoiser + the classifier's forward and backward pass), so 9 dpmpp-2m steps, as for guided B cells.

Paired per seed (same latents and labels in every cell): for each guided cell at NFE 18 against B's W = 1
cell at NFE 18, the share of seeds whose p(c|x) rose and fell (from inv-prob's stored per-seed log p).

FD is the Fréchet distance in the digits classifier's feature space against the training split's statistics
(not FID); class-accuracy and inv-prob (E[1/p(c|x)], quantiles beside it) use the same classifier.
Writes benchmarks/guidance_study.json (.md: the tables) and benchmarks/guidance_study.png.

Run: python benchmarks/guidance_study.py [--seeds 0-499] [--blocks 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METRICS = "fd,class-accuracy,inv-prob"
WEIGHTS = "1,1.5,2,3,4"
INTERVALS = "0:1,0:5,0.3:1,0.3:5,0.3:80"  # (LO, HI]; 0.3:80 is everything above 0.3 (80 = sigma_max)

SWEEPS = {
    "A_heun_issue_budgets": ["--solver", "heun", "--guidance", WEIGHTS, "--nfe", "9,17,35"],
    "A2_heun_nearest": ["--solver", "heun", "--guidance", WEIGHTS, "--nfe", "9,17,35", "--nfe-policy", "nearest"],
    "B_dpmpp2m_even_budgets": ["--solver", "dpmpp-2m", "--guidance", WEIGHTS, "--nfe", "10,18,34"],
    "C_interval_nfe18": [
        "--solver",
        "dpmpp-2m",
        "--guidance",
        "2,3",
        "--guidance-interval",
        INTERVALS,
        "--nfe",
        "17,18,19",
    ],
    "D_uncond_guide_nfe18": [
        "--solver",
        "dpmpp-2m",
        "--guidance",
        "1.5,2,3",
        "--guide",
        "digits-edm",
        "--nfe",
        "18",
    ],
    "E_autoguidance_nfe18": [
        "--solver",
        "dpmpp-2m",
        "--guidance",
        "1.5,2,2.5,3,4",
        "--guide",
        "digits-edm-cond-early",
        "--nfe",
        "18",
    ],
    "F_classifier_guidance_nfe18": [
        "--solver",
        "dpmpp-2m",
        "--classifier-guidance",
        "0.25,0.5,1,2",
        "--classifier",
        "digits-noisy-classifier",
        "--nfe",
        "18",
    ],
}


def run_sweep(name: str, args: list[str], *, seeds: str, blocks: int, work: Path) -> list[dict]:
    """One `diffbench sweep` through the real command; its cells as results.json holds them."""
    out = work / name
    cmd = [str(Path(sys.executable).with_name("diffbench")), "sweep", "digits-edm-cond", *args, "--metric", METRICS]
    cmd += ["--seeds", seeds, "--blocks", str(blocks), "--store", str(work / f"{name}.db"), "--out", str(out)]
    x = "classifier-guidance" if "--classifier-guidance" in args else "guidance"
    cmd += ["--x", x, "--device", "cpu", "--overwrite"]
    print("$ diffbench", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads((out / "results.json").read_text())["cells"]


def summarize(cells: list[dict]) -> list[dict]:
    """One row per cell: the options, the counted NFE per network, each metric with its block interval."""
    rows = []
    for c in cells:
        spec = c["identity"].get("spec", {})
        row = {
            "solver": c["solver"],
            "guidance": spec.get("guidance"),
            "guide": spec.get("guide") or "null",
            "interval": spec.get("guidance_interval"),
            "classifier_guidance": spec.get("classifier_guidance"),
            "nfe_requested": c["nfe_requested"],
            "status": c["status"],
        }
        if c["status"] != "done":
            row["skip_reason"] = c["skip_reason"]
            rows.append(row)
            continue
        row.update({"nfe": c["nfe"], "steps": c["steps"], "nfe_per_network": c["provenance"]["nfe_per_network"]})
        for m, r in c["results"].items():
            row[m] = {k: r.get(k) for k in ("value", "ci_low", "ci_high", "q50", "q90", "q99") if k in r}
        row["_cell"] = c  # dropped before writing; kept for the per-seed comparison
        rows.append(row)
    return rows


def per_seed_against_unguided(sweeps: dict, nfe: int = 18) -> list[dict]:
    """For every guided cell at `nfe` (sweeps B, D, E, F): the share of seeds whose p(c|x) rose / fell against
    B's W = 1 cell at the same NFE (same seeds, latents, labels), via the report's seed_shift."""
    from diffbench.sweep.report import seed_shift

    base = [
        r for r in sweeps.get("B_dpmpp2m_even_budgets", {}).get("cells", [])
        if r.get("_cell") and r["guidance"] == 1 and r["nfe"] == nfe
    ]  # fmt: skip
    if not base:
        return []
    out = []
    for name in (
        "B_dpmpp2m_even_budgets",
        "D_uncond_guide_nfe18",
        "E_autoguidance_nfe18",
        "F_classifier_guidance_nfe18",
    ):
        for r in sweeps.get(name, {}).get("cells", []):
            if not r.get("_cell") or r["nfe"] != nfe or r is base[0]:
                continue
            shift = seed_shift(r["_cell"], base[0]["_cell"])
            if shift is None:
                continue
            out.append(
                {
                    "sweep": name,
                    "guidance": r["guidance"],
                    "guide": r["guide"],
                    "classifier_guidance": r.get("classifier_guidance"),
                    "rose": shift.rose / shift.n,
                    "fell": shift.fell / shift.n,
                    "seeds": shift.n,
                    "inv_prob": r["inv-prob"]["value"],
                }
            )
    return out


def best_at_equal_nfe(sweeps: dict, nfe: int = 18) -> list[dict]:
    """Each guidance method's best cell at the counted NFE (lowest FD), with its accuracy and E[1/p]."""
    methods = {
        "no guidance (W = 1)": ("B_dpmpp2m_even_budgets", lambda r: r["guidance"] == 1),
        "classifier-free, null label": ("B_dpmpp2m_even_budgets", lambda r: r["guidance"] not in (None, 1)),
        "classifier-free, digits-edm": ("D_uncond_guide_nfe18", lambda r: True),
        "autoguidance, digits-edm-cond-early": ("E_autoguidance_nfe18", lambda r: True),
        "classifier guidance, digits-noisy-classifier": ("F_classifier_guidance_nfe18", lambda r: True),
    }
    out = []
    for label, (name, keep) in methods.items():
        done = [
            r for r in sweeps.get(name, {}).get("cells", []) if r["status"] == "done" and r["nfe"] == nfe and keep(r)
        ]
        if not done:
            continue
        best = min(done, key=lambda r: r["fd"]["value"])
        weight = best["classifier_guidance"] if best.get("classifier_guidance") is not None else best["guidance"]
        out.append(
            {
                "method": label,
                "weight": weight,
                "nfe": best["nfe"],
                "nfe_per_network": best["nfe_per_network"],
                "fd": best["fd"],
                "class-accuracy": best["class-accuracy"],
                "inv-prob": best["inv-prob"],
            }
        )
    return out


def plot(rows: list[dict], path: Path, others: dict[str, list[dict]] | None = None) -> None:
    """FD, accuracy and E[1/p] against W, one line per counted NFE (sweep B); `others` adds dashed lines at
    NFE 18 for other references (label -> cells of sweep D or E)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    done = [r for r in rows if r["status"] == "done" and r["interval"] is None]
    for nfe in sorted({r["nfe"] for r in done}):
        pts = sorted((r for r in done if r["nfe"] == nfe), key=lambda r: r["guidance"])
        w = [r["guidance"] for r in pts]
        axes[0].plot(w, [r["fd"]["value"] for r in pts], "o-", label=f"NFE {nfe}")
        axes[1].plot(w, [r["class-accuracy"]["value"] for r in pts], "o-", label=f"NFE {nfe}")
        axes[2].plot(w, [r["inv-prob"]["value"] for r in pts], "o-", label=f"NFE {nfe}")
        axes[3].plot(w, [r["inv-prob"]["q99"] for r in pts], "o-", label=f"NFE {nfe}")
    for label, cells in (others or {}).items():
        pts = sorted((r for r in cells if r["status"] == "done" and r["nfe"] == 18), key=lambda r: r["guidance"])
        w = [r["guidance"] for r in pts]
        for ax, key in zip(axes, ("fd", "class-accuracy", "inv-prob"), strict=False):
            ax.plot(w, [r[key]["value"] for r in pts], "s--", label=f"{label}, NFE 18")
        axes[3].plot(w, [r["inv-prob"]["q99"] for r in pts], "s--", label=f"{label}, NFE 18")
    titles = ("FD (digits features)", "class accuracy", "E[1/p(c|x)]", "99th percentile of 1/p")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xlabel("guidance W (1 = none)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[3].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("digits-edm-cond, dpmpp-2m: guidance by the null label (solid), by other models (dashed), equal NFE")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _fmt(m: dict | None, key: str = "value") -> str:
    if not m or m.get(key) is None:
        return "—"
    v = m[key]
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3g}"


def markdown(sweeps: dict) -> str:
    """One Markdown table per sweep: options, counted NFE (per network), FD, accuracy, E[1/p] and its quantiles."""
    parts = []
    for name, sweep in sweeps.items():
        head = "| W | guide | interval | NFE asked | NFE counted (per network) | steps | FD | accuracy | E[1/p] |"
        head += " q50 | q90 | q99 |\n|" + "---|" * 12
        lines = [f"**{name}** (`{' '.join(sweep['args'])}`, {sweep['wall_s']:.0f} s)", "", head]
        skipped = []
        for r in sweep["cells"]:
            if r["status"] != "done":
                skipped.append(f"W {r['guidance']} {r['interval'] or ''} at NFE {r['nfe_requested']}")
                continue
            per = r["nfe_per_network"]
            counted = f"{r['nfe']} ({' + '.join(f'{v:g}' for v in per.values())})"
            ip = r["inv-prob"]
            w = f"{r['guidance']:g}" if r.get("guidance") is not None else f"s={r['classifier_guidance']:g}"
            guide = r.get("guide", "null") if r.get("classifier_guidance") is None else "digits-noisy-classifier"
            lines.append(
                f"| {w} | {guide} | {r['interval'] or 'all'} | {r['nfe_requested']} "
                f"| {counted} | {r['steps']} | {_fmt(r['fd'])} | {_fmt(r['class-accuracy'])} | {_fmt(ip)} "
                f"| {_fmt(ip, 'q50')} | {_fmt(ip, 'q90')} | {_fmt(ip, 'q99')} |"
            )
        if skipped:
            lines += ["", f"Skipped (budget not reachable exactly under guidance costs): {'; '.join(skipped)}."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def markdown_summary(best: list[dict], shifts: list[dict]) -> str:
    """The method comparison at equal counted NFE and the per-seed rise/fall table."""
    lines = ["**Each method at its best W (lowest FD), dpmpp-2m, counted NFE 18**", ""]
    lines += ["| method | W (s for classifier) | NFE counted (per network) | FD | accuracy | E[1/p] | q99 |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for b in best:
        per = " + ".join(f"{k} {v:g}" for k, v in b["nfe_per_network"].items())
        lines.append(
            f"| {b['method']} | {b['weight']:g} | {b['nfe']} ({per}) | {_fmt(b['fd'])} | {_fmt(b['class-accuracy'])} "
            f"| {_fmt(b['inv-prob'])} | {_fmt(b['inv-prob'], 'q99')} |"
        )
    if shifts:
        lines += ["", "**Per seed against W = 1 at NFE 18 (same latents and labels): share of seeds whose p(c|x)"]
        lines[-1] += " rose / fell**"
        lines += ["", "| sweep | W | guide / classifier | rose | fell | E[1/p] |", "|---|---|---|---|---|---|"]
        for s in shifts:
            w = f"{s['guidance']:g}" if s["classifier_guidance"] is None else f"s={s['classifier_guidance']:g}"
            g = s["guide"] if s["classifier_guidance"] is None else "digits-noisy-classifier"
            lines.append(f"| {s['sweep']} | {w} | {g} | {s['rose']:.1%} | {s['fell']:.1%} | {s['inv_prob']:.4g} |")
    return "\n".join(lines) + "\n"


def _others(sweeps: dict) -> dict[str, list[dict]]:
    """The dashed lines of the plot: the unconditional guide (D) and autoguidance (E)."""
    names = {"guide digits-edm": "D_uncond_guide_nfe18", "autoguidance": "E_autoguidance_nfe18"}
    return {label: sweeps[name]["cells"] for label, name in names.items() if name in sweeps}


def _strip(sweeps: dict) -> dict:
    """The sweeps without the kept cells (what the JSON holds)."""
    return {
        k: {**v, "cells": [{kk: vv for kk, vv in r.items() if kk != "_cell"} for r in v["cells"]]}
        for k, v in sweeps.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-499")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("guidance-study"))
    ap.add_argument("--only", default=",".join(SWEEPS), help="comma list of sweeps to run (A_..., B_..., C_...)")
    ap.add_argument("--json", type=Path, default=HERE / "guidance_study.json")
    ap.add_argument("--png", type=Path, default=HERE / "guidance_study.png")
    ap.add_argument(
        "--tables-only", action="store_true", help="rewrite the .md tables and the plot from the JSON, run nothing"
    )
    a = ap.parse_args()
    if a.tables_only:
        data = json.loads(a.json.read_text())
        if "B_dpmpp2m_even_budgets" in data["sweeps"]:
            plot(data["sweeps"]["B_dpmpp2m_even_budgets"]["cells"], a.png, _others(data["sweeps"]))
        text = markdown_summary(data.get("best_at_nfe18", []), data.get("per_seed_vs_unguided_nfe18", []))
        a.json.with_suffix(".md").write_text(text + "\n" + markdown(data["sweeps"]))
        return
    a.work.mkdir(parents=True, exist_ok=True)
    out: dict = {
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "seeds": a.seeds,
        "blocks": a.blocks,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "sweeps": {},
    }
    if a.json.exists():
        old = json.loads(a.json.read_text())
        out["sweeps"] = old.get("sweeps", {})
        out["per_seed_vs_unguided_nfe18"] = old.get("per_seed_vs_unguided_nfe18", [])
    for name in a.only.split(","):
        t0 = time.perf_counter()
        cells = run_sweep(name, SWEEPS[name], seeds=a.seeds, blocks=a.blocks, work=a.work)
        out["sweeps"][name] = {"args": SWEEPS[name], "wall_s": time.perf_counter() - t0, "cells": summarize(cells)}
        a.json.write_text(json.dumps({**out, "sweeps": _strip(out["sweeps"])}, indent=1))
    for name, sweep in out["sweeps"].items():  # sweeps not run now: their cells from the work folder, if kept
        kept = a.work / name / "results.json"
        if kept.exists() and not any("_cell" in r for r in sweep["cells"]):
            sweep["cells"] = summarize(json.loads(kept.read_text())["cells"])
    if "B_dpmpp2m_even_budgets" in out["sweeps"]:
        plot(out["sweeps"]["B_dpmpp2m_even_budgets"]["cells"], a.png, _others(out["sweeps"]))
    out["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    out["best_at_nfe18"] = best_at_equal_nfe(out["sweeps"])
    shifts = per_seed_against_unguided(out["sweeps"])
    out["per_seed_vs_unguided_nfe18"] = shifts or out.get("per_seed_vs_unguided_nfe18", [])
    out["sweeps"] = _strip(out["sweeps"])
    a.json.write_text(json.dumps(out, indent=1))
    text = markdown_summary(out["best_at_nfe18"], out["per_seed_vs_unguided_nfe18"])
    a.json.with_suffix(".md").write_text(text + "\n" + markdown(out["sweeps"]))


if __name__ == "__main__":
    main()
