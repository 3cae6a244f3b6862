"""Error versus NFE for every deterministic solver on the analytic mixture (exact denoiser, exact ODE solution).

    python benchmarks/solver_accuracy.py [--samples 16] [--write]

Each cell is the RMS distance, over `--samples` latents, between the solver's x(sigma_min) and scipy's
DOP853 solution of the same ODE (rtol 1e-10) from the same latents, on the `gmm` model (3x8x8), sigma 80 ->
0.002, endpoint sigma_min (no final denoising step: the convention of the fast-solver papers' tables).
'-' marks a budget the solver cannot spend exactly. Table 1: every solver on EDM's rho=7 grid. Table 2: each
on the grid its paper uses (logSNR for DPM-Solver(++)/UniPC, time-quadratic for DEIS, rho=7 otherwise).
Table 3 takes every solver, stochastic ones too, to the distribution level: the Frechet distance between the
moments of `--dist-samples` samples and the exact moments of an 8-d mixture (with the same statistic for
exact samples of that size as the noise floor). Table 4 compares the two third-order multistep forms (the
published phi_3 weight and the Taylor 2 phi_3, data and noise prediction): error on the logSNR grid by NFE,
and the measured order (fit over 64-512 steps on EDM's grid, endpoint sigma_min). With --write the tables
replace the marked section of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

import diffbench
from diffbench.errors import BudgetError
from diffbench.models.analytic import reference_solution
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.solvers import all_solvers

BUDGETS = [*range(3, 21), 35]
DIST_BUDGETS = [3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 35]
DIST_MODEL = "gmm:components=3,shape=8,seed=1"
PAPER_GRID = {
    "dpm-solver-2": "logsnr",
    "dpm-solver-3": "logsnr",
    "dpmpp-2s": "logsnr",
    "dpmpp-2m": "logsnr",
    "dpmpp-3m": "logsnr",
    "unipc": "logsnr",
    "deis": "time-quadratic",
}
START, END = "<!-- solver-accuracy:start -->", "<!-- solver-accuracy:end -->"


def table(model, z, ref, grid_of) -> list[str]:
    solvers = [s for s in all_solvers() if not s.stochastic]
    lines = [
        "| solver | grid | " + " | ".join(str(b) for b in BUDGETS) + " |",
        "|---|---|" + "---:|" * len(BUDGETS),
    ]
    for s in solvers:
        grid = grid_of(s.name)
        cells = []
        for nfe in BUDGETS:
            try:
                out = diffbench.sample(
                    model,
                    latents=z,
                    solver=s.name,
                    schedule=grid,
                    nfe=nfe,
                    endpoint="sigma_min",
                    device="cpu",
                )
            except BudgetError:
                cells.append("–")
                continue
            cells.append(f"{float(((out.images - ref) ** 2).mean().sqrt()):.1e}")
        lines.append(f"| {s.name} | {grid} | " + " | ".join(cells) + " |")
    return lines


def distribution_table(n: int) -> list[str]:
    from diffbench.metrics.distribution import exact_frechet

    model = diffbench.load(DIST_MODEL)
    floor = exact_frechet(model, model.sample_data(n, torch.Generator().manual_seed(0)))
    lines = [
        f"Fréchet distance to the exact moments of `{DIST_MODEL}`, {n} seeds, EDM's grid, endpoint edm "
        f"(exact samples of the same size: {floor:.1e}):",
        "",
        "| solver | " + " | ".join(str(b) for b in DIST_BUDGETS) + " |",
        "|---|" + "---:|" * len(DIST_BUDGETS),
    ]
    for s in all_solvers():
        cells = []
        for nfe in DIST_BUDGETS:
            try:
                out = diffbench.sample(model, seeds=range(n), solver=s.name, nfe=nfe, batch=n, device="cpu")
            except BudgetError:
                cells.append("–")
                continue
            cells.append(f"{exact_frechet(model, out.images):.1e}")
        lines.append(f"| {s.name} | " + " | ".join(cells) + " |")
    return lines


THREE_M_BUDGETS = [4, 5, 6, 7, 8, 10, 12, 15, 20, 35]


def three_m_table(model, z, ref) -> list[str]:
    import numpy as np

    from diffbench.sampling.schedules import edm_grid
    from diffbench.sampling.solvers import get_solver

    lines = [
        "| solver | variant | measured order | " + " | ".join(str(b) for b in THREE_M_BUDGETS) + " |",
        "|---|---|---:|" + "---:|" * len(THREE_M_BUDGETS),
    ]
    x0 = z.double() * 80.0

    def D(x, s):
        return model(x, torch.full((x.shape[0],), float(s), dtype=torch.float64))

    for name in ("dpmpp-3m", "dpm-solver-3m"):
        for variant in ("published", "taylor"):
            cells = []
            for nfe in THREE_M_BUDGETS:
                out = diffbench.sample(
                    model,
                    latents=z,
                    solver=name,
                    schedule="logsnr",
                    nfe=nfe,
                    endpoint="sigma_min",
                    device="cpu",
                    variant=variant,
                )
                cells.append(f"{float(((out.images - ref) ** 2).mean().sqrt()):.1e}")
            steps = [64, 128, 256, 512]
            errs = [
                float(
                    ((get_solver(name).fn(D, x0, edm_grid(n + 1, 0.002, 80.0), variant=variant) - ref) ** 2)
                    .mean()
                    .sqrt()
                )
                for n in steps
            ]
            order = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
            lines.append(f"| {name} | {variant} | {order:.2f} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--dist-samples", type=int, default=1000)
    ap.add_argument("--write", action="store_true", help="replace the table in benchmarks/README.md")
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = diffbench.load("gmm")
    z = NoiseSource(range(args.samples)).latents(model.sample_shape)
    ref = reference_solution(model, z.double() * 80, sigma_from=80.0, sigma_to=0.002)
    scale = float((ref**2).mean().sqrt())
    out = [
        f"RMS error at sigma_min against the exact ODE solution (`gmm`, {args.samples} latents, "
        f"RMS of the solution itself {scale:.3f}); columns are NFE.",
        "",
        "Every solver on EDM's rho = 7 grid:",
        "",
        *table(model, z, ref, lambda name: "edm"),
        "",
        "Each solver on its paper's grid:",
        "",
        *table(model, z, ref, lambda name: PAPER_GRID.get(name, "edm")),
        "",
        *distribution_table(args.dist_samples),
        "",
        "The two third-order multistep forms: RMS error on the logSNR grid by NFE (endpoint sigma_min), and the",
        "order fitted over 64-512 steps on EDM's grid:",
        "",
        *three_m_table(model, z, ref),
    ]
    text = "\n".join(out)
    print(text)
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    if args.write:
        path = Path(__file__).with_name("README.md")
        readme = path.read_text()
        new = f"{START}\n{text}\n{END}"
        readme = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda m: new, readme, flags=re.S)
        path.write_text(readme)


if __name__ == "__main__":
    main()
