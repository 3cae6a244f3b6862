"""How much diffusion time is enough on the built-in digits models (issue 22), through the CLI.

Franzese et al. 2023 (arXiv 2206.05173): a shorter diffusion (a lower sigma_max) needs fewer steps, but
the true noised data p_sigma at the start of the reverse run is then far from the N(0, sigma^2 I) the
sampler starts from; an auxiliary prior of p_sigma bridges that gap. Here, on `digits-edm` (and
`digits-edm-early` with --models), heun on EDM's grid:

  - the N(0, sigma^2 I) start at sigma_max in {80, 20, 10, 5, 2, 1}, NFE 9 and 17 (the issue's budgets) and
    5 and 7 (to find the budget where the starts part);
  - the same sigmas and budgets started from auxiliary priors fitted by `diffbench fit-prior` on the
    training split at each sigma: the Gaussian N(mu, Sigma + sigma^2 I) and a 10-component full-covariance
    mixture (EM) plus sigma^2 I; and the ideal prior (the 1,500 training images plus noise: it copies the
    data, an upper limit on what any prior can do, for analysis only);
  - the default: sigma_max 80, NFE 35, N(0, 80^2 I).

Metrics per cell: fd (Fréchet distance in the digits classifier's feature space against the training
split, as every digits benchmark here) and prior-kl (KL(p_sigma || start) in nats over the 64 pixels,
Monte Carlo over the seeds, with the closed-form bound for the Gaussian starts). Every cell uses the same
seeds and seed blocks, so the FD difference of any cell to the default has a paired jackknife interval; a
cell "stays within the default" when that 95% interval contains 0 or lies below it (not detectably worse).

Writes benchmarks/diffusion_time_study.json, .md (tables and the answer) and .png.

Run: OMP_NUM_THREADS=1 python benchmarks/diffusion_time_study.py [--seeds 0-999] [--blocks 20]
     [--models digits-edm,digits-edm-early] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIGMAS = (80, 20, 10, 5, 2, 1)
NFES = (5, 7, 9, 17)  # the issue asks for 9 and 17; 5 and 7 find where the starts part
DEFAULT = (80, 35)
K = 10  # mixture components (1,500 training images: K (D + 1) = 650 needed)
STARTS = ("normal", "gaussian", f"gmm:{K}", "ideal")


def diffbench(*args: str) -> None:
    """Run the real command (the worktree's code when PYTHONPATH points at it)."""
    cmd = [sys.executable, "-c", "import sys; from diffbench.cli.app import main; main(sys.argv[1:])", *args]
    print("$ diffbench", " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def fit_priors(work: Path) -> dict[tuple[str, float], Path]:
    """The Gaussian and mixture priors at every sigma, fitted on the digits training split."""
    out = {}
    for s in SIGMAS:
        for kind in ("gaussian", f"gmm:{K}"):
            path = work / "priors" / f"{kind.replace(':', '')}-s{s}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                diffbench("fit-prior", "digits-data", "--sigma", str(s), "--kind", kind, "-o", str(path))
            out[kind, float(s)] = path
    return out


def sweep(model: str, name: str, args: list[str], *, seeds: str, blocks: int, work: Path) -> list[dict]:
    out = work / model / name
    diffbench(
        "sweep", model, "--solver", "heun", *args, "--metric", "fd,prior-kl", "--seeds", seeds,
        "--blocks", str(blocks), "--store", str(work / f"{model}.db"), "--out", str(out),
        *(["--x", "sigma_max"] if name == "normal" else []), "--device", "cpu", "--overwrite", "--no-plot",
    )  # fmt: skip
    return json.loads((out / "results.json").read_text())["cells"]


def start_of(spec: dict) -> str:
    prior = spec.get("prior")
    if not prior:
        return "normal"
    if prior.startswith("ideal:"):
        return "ideal"
    return "gaussian" if "/gaussian-" in prior else f"gmm:{K}"


def summarize(cells: list[dict]) -> list[dict]:
    """One row per distinct cell (each sweep's results.json lists every cell of the store so far)."""
    rows, seen = [], set()
    for c in cells:
        if c["status"] != "done" or c["id"] in seen:
            continue
        seen.add(c["id"])
        spec = c["identity"]["spec"]
        r = {
            "start": start_of(spec),
            "sigma_max": float(spec.get("sigma_max") or 80.0),
            "nfe": c["nfe"],
            "id": c["id"],
        }
        for m in ("fd", "prior-kl"):
            res = c["results"][m]
            r[m] = {k: res.get(k) for k in ("value", "ci_low", "ci_high", "loo", "mc_se", "bound", "per_dim")}
        rows.append(r)
    return rows


def paired_to_default(rows: list[dict]) -> None:
    """FD(cell) − FD(default): the paired jackknife over the shared seed blocks (diffbench.metrics.jackknife)."""
    from diffbench.metrics.jackknife import jackknife, paired

    base = next(r for r in rows if r["start"] == "normal" and (r["sigma_max"], r["nfe"]) == DEFAULT)
    jb = jackknife(base["fd"]["value"], base["fd"]["loo"])
    for r in rows:
        d = paired(jackknife(r["fd"]["value"], r["fd"]["loo"]), jb)
        r["fd_minus_default"] = {"value": d.value, "ci_low": d.ci_low, "ci_high": d.ci_high}
        r["within_default"] = d.ci_low <= 0.0  # not detectably worse than the default
    for r in rows:
        for m in ("fd", "prior-kl"):
            r[m].pop("loo", None)


def answer(rows: list[dict]) -> dict[str, dict]:
    """Per start: the within-default cells with the fewest NFE, and among them the lowest sigma_max."""
    out = {}
    for st in STARTS:
        ok = [r for r in rows if r["start"] == st and r["within_default"] and (r["sigma_max"], r["nfe"]) != DEFAULT]
        if not ok:
            out[st] = {"nfe": None, "sigma_max": None}
            continue
        nfe = min(r["nfe"] for r in ok)
        sig = min(r["sigma_max"] for r in ok if r["nfe"] == nfe)
        lowest = min(r["sigma_max"] for r in ok)
        out[st] = {"nfe": nfe, "sigma_max": sig, "lowest_sigma_any_nfe": lowest}
    return out


def fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}g}"


def markdown(model: str, rows: list[dict], ans: dict[str, dict]) -> str:
    base = next(r for r in rows if r["start"] == "normal" and (r["sigma_max"], r["nfe"]) == DEFAULT)
    lines = [
        f"**{model}**: default (sigma_max 80, NFE 35, N(0, 80² I)) FD {fmt(base['fd']['value'])} "
        f"[{fmt(base['fd']['ci_low'])}, {fmt(base['fd']['ci_high'])}]",
        "",
        "| start | sigma_max | NFE | FD [95%] | FD − default [paired 95%] | within | prior-kl (nats) ± MC se | bound |",
        "|---|---:|---:|---|---|:-:|---|---:|",
    ]
    order = {s: i for i, s in enumerate(STARTS)}
    for r in sorted(rows, key=lambda r: (order[r["start"]], r["nfe"], -r["sigma_max"])):
        if (r["sigma_max"], r["nfe"]) == DEFAULT and r["start"] == "normal":
            continue
        fd, d, kl = r["fd"], r["fd_minus_default"], r["prior-kl"]
        lines.append(
            f"| {r['start']} | {r['sigma_max']:g} | {r['nfe']} | {fmt(fd['value'])} [{fmt(fd['ci_low'])}, "
            f"{fmt(fd['ci_high'])}] | {d['value']:+.3g} [{d['ci_low']:+.3g}, {d['ci_high']:+.3g}] | "
            f"{'yes' if r['within_default'] else 'no'} | {fmt(kl['value'])} ± {fmt(kl['mc_se'], 2)} | "
            f"{fmt(kl['bound'])} |"
        )
    lines += [
        "",
        "Fewest NFE (then lowest sigma_max) at which each start is not detectably worse than the default:",
        "",
    ]
    for st, a in ans.items():
        if a["nfe"] is None:
            lines.append(f"- {st}: none of its cells stays within the default's interval")
        else:
            lines.append(
                f"- {st}: NFE {a['nfe']} at sigma_max {a['sigma_max']:g} (lowest sigma_max at any NFE here: "
                f"{a['lowest_sigma_any_nfe']:g})"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, list[dict]], path: Path) -> None:
    """Per model: FD against sigma_max, one panel per NFE, one line per start (the default's interval shaded),
    and prior-kl against sigma_max per start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results)
    nfes = sorted({r["nfe"] for rows in results.values() for r in rows if r["nfe"] != DEFAULT[1]})
    cols = len(nfes) + 1
    fig, axes = plt.subplots(len(models), cols, figsize=(3.3 * cols, 3.2 * len(models)), squeeze=False)
    styles = {"normal": ("o-", "k"), "gaussian": ("s--", "tab:blue"), f"gmm:{K}": ("^-", "tab:red"),
              "ideal": ("x:", "tab:grey")}  # fmt: skip
    for i, model in enumerate(models):
        rows = results[model]
        base = next(r for r in rows if r["start"] == "normal" and (r["sigma_max"], r["nfe"]) == DEFAULT)
        for j, nfe in enumerate(nfes):
            ax = axes[i][j]
            ax.axhspan(base["fd"]["ci_low"], base["fd"]["ci_high"], color="tab:green", alpha=0.2,
                       label="default (80, NFE 35)")  # fmt: skip
            for st in STARTS:
                pts = sorted((r for r in rows if r["start"] == st and r["nfe"] == nfe), key=lambda r: r["sigma_max"])
                style, color = styles[st]
                ax.plot([r["sigma_max"] for r in pts], [r["fd"]["value"] for r in pts], style, color=color, label=st)
            ax.set_title(f"{model}: FD at NFE {nfe}", fontsize=9)
            ax.set_ylim(0, max(3 * base["fd"]["value"], 10))
        ax = axes[i][-1]
        for st in STARTS:
            pts = sorted((r for r in rows if r["start"] == st and r["nfe"] == nfes[-1]), key=lambda r: r["sigma_max"])
            style, color = styles[st]
            ax.plot([r["sigma_max"] for r in pts], [max(r["prior-kl"]["value"], 1e-6) for r in pts], style,
                    color=color, label=st)  # fmt: skip
        ax.set_yscale("log")
        ax.set_title(f"{model}: KL(p_sigma || start), nats (0 at 1e-6)", fontsize=9)
        for ax in axes[i]:
            ax.set_xscale("log")
            ax.set_xticks(SIGMAS, [str(v) for v in SIGMAS])
            ax.minorticks_off()
            ax.set_xlabel("sigma_max")
            ax.grid(alpha=0.3, which="both")
        axes[i][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-999")
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--models", default="digits-edm")
    ap.add_argument("--nfes", default=",".join(map(str, NFES)), help="budgets besides the default's 35")
    ap.add_argument("--work", type=Path, default=Path("diffusion-time-study"))
    ap.add_argument("--json", type=Path, default=HERE / "diffusion_time_study.json")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    priors = fit_priors(a.work)
    out: dict = {
        "machine": f"{platform.node()} {platform.machine()}".strip(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "seeds": a.seeds,
        "blocks": a.blocks,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "models": {},
    }
    if a.json.exists():
        out["models"] = json.loads(a.json.read_text()).get("models", {})
    kw = {"seeds": a.seeds, "blocks": a.blocks, "work": a.work}
    nfes = a.nfes
    for model in a.models.split(","):
        t0 = time.perf_counter()
        sig = ",".join(str(s) for s in SIGMAS)
        cells = sweep(model, "normal", ["--sigma-max", sig, "--nfe", nfes], **kw)
        cells += sweep(model, "default", ["--sigma-max", str(DEFAULT[0]), "--nfe", str(DEFAULT[1])], **kw)
        for s in SIGMAS:
            pri = f"file:{priors['gaussian', float(s)]},file:{priors[f'gmm:{K}', float(s)]},ideal:digits-data"
            args = ["--sigma-max", str(s), "--prior", pri, "--nfe", nfes]
            cells += sweep(model, f"priors-s{s}", args, **kw)
        rows = summarize(cells)
        paired_to_default(rows)
        ans = answer(rows)
        out["models"][model] = {"wall_s": time.perf_counter() - t0, "rows": rows, "answer": ans}
        a.json.write_text(json.dumps(out, indent=1))
    out["wall_s"] = time.perf_counter() - t_start
    out["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    a.json.write_text(json.dumps(out, indent=1))
    md = [markdown(m, v["rows"], v["answer"]) for m, v in out["models"].items()]
    a.json.with_suffix(".md").write_text("\n".join(md))
    plot({m: v["rows"] for m, v in out["models"].items()}, a.json.with_suffix(".png"))


if __name__ == "__main__":
    main()
