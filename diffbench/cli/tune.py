"""`diffbench tune-schedule` and `diffbench score-error`: thin commands over diffbench.sweep.tune and
diffbench.metrics.score_error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from diffbench.cli.app import app


@app.command("tune-schedule")
def tune_schedule_cmd(
    model: Annotated[str, typer.Argument(help="Built-in name, registry name, path or URL.")],
    solver: Annotated[str, typer.Option("--solver", help="A deterministic solver (see `diffbench solvers`).")],
    nfe: Annotated[int, typer.Option("--nfe", help="The exact budget the grid is tuned for.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The grid file to write (.json).")],
    method: Annotated[str, typer.Option("--method", help="gits (Chen et al. 2024) or rho (EDM's family).")] = "gits",
    calib_seeds: Annotated[str, typer.Option("--calib-seeds", help="Calibration seeds.")] = "1000000-1000255",
    eval_seeds: Annotated[
        str | None,
        typer.Option("--eval-seeds", help="Also compare the tuned grid with edm/ve/vp by ref-error on these seeds."),
    ] = None,
    endpoint: Annotated[str, typer.Option("--endpoint", help="edm (final step to 0) or sigma_min.")] = "edm",
    order: Annotated[int | None, typer.Option("--order", help="The solver's order option.")] = None,
    cost: Annotated[str, typer.Option("--cost", help="GITS cost: dev (the paper's) or l2.")] = "dev",
    coeff: Annotated[float, typer.Option("--coeff", help="GITS DP coefficient.")] = 1.15,
    teacher_points: Annotated[
        int, typer.Option("--teacher-points", help="Points of the teacher's rho=7 grid.", min=3)
    ] = 61,
    ref_steps: Annotated[
        int, typer.Option("--ref-steps", help="Heun steps of the reference (rho, eval).", min=2)
    ] = 1024,
    batch: Annotated[int, typer.Option("--batch", help="Batch size.", min=1)] = 256,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    offline: Annotated[bool, typer.Option(help="Never touch the network to fetch MODEL.")] = False,
) -> None:
    """Tune a sigma grid for one solver and budget; `--schedule file:OUT` reuses it in sample, fid and sweep.

    Example: diffbench tune-schedule digits-edm --solver ipndm --nfe 5 -o grid.json
    """
    from diffbench.device import check_device
    from diffbench.errors import ConfigError
    from diffbench.io import check_output_file
    from diffbench.models.load import load
    from diffbench.sampling.plan import plan
    from diffbench.seeds import parse_seeds
    from diffbench.sweep.tune import check_disjoint, evaluate_grid, grid_points, tune_schedule, write_grid

    if out.suffix.lower() != ".json":
        raise ConfigError(f"--out {out}: a tuned grid is written as .json")
    if not (coeff > 0 and coeff < float("inf")):
        raise ConfigError(f"--coeff must be a finite number > 0, got {coeff}")
    check_output_file(out, flag="--out", overwrite=overwrite)
    calib = parse_seeds(calib_seeds)
    evals = parse_seeds(eval_seeds) if eval_seeds else None
    check_disjoint(calib, evals)
    options = {} if order is None else {"order": order}
    grid_points(solver, nfe, endpoint=endpoint, solver_options=options)  # refusals before loading the model
    dev = check_device(device)
    denoiser = load(model, device="cpu", offline=offline)
    grid = tune_schedule(
        denoiser,
        solver=solver,
        nfe=nfe,
        calib_seeds=calib,
        method=method,
        endpoint=endpoint,
        solver_options=options,
        cost=cost,
        coeff=coeff,
        teacher_points=teacher_points,
        ref_steps=ref_steps,
        batch=batch,
        device=dev,
        eval_seeds=evals,
    )
    grid.record["model"] = model
    write_grid(grid, out)
    check = plan(denoiser, solver=solver, schedule=f"file:{out}", nfe=nfe, endpoint=endpoint, solver_options=options)
    if check.nfe != nfe:  # the grid must let the solver spend exactly the budget
        raise RuntimeError(f"bug: the tuned grid plans {check.nfe} NFE, not {nfe}")
    r = grid.record
    how = (
        f"GITS ({r['cost']} cost, coeff {r['coeff']:g}, teacher ipndm-4 on {r['teacher']['points']} points)"
        if method == "gits"
        else f"rho {r['rho']:.4g} (ref-error {r['ref_error']:.4g})"
    )
    typer.echo(f"{out}: {solver} at NFE {nfe}, {len(grid.sigmas)} sigmas by {how}")
    typer.echo("sigmas: " + ", ".join(f"{s:.4g}" for s in grid.sigmas))
    typer.echo(f"calibration: {len(calib)} seeds ({r['calibration_seeds']}), {r['calibration_nfe']} NFE in all")
    if evals:
        res = evaluate_grid(
            denoiser,
            out,
            solver=solver,
            nfe=nfe,
            seeds=evals,
            endpoint=endpoint,
            solver_options=options,
            ref_steps=ref_steps,
            batch=batch,
            device=dev,
        )
        grid.record["evaluation"] = {"seeds": eval_seeds, "ref_error": res, "ref_steps": ref_steps}
        write_grid(grid, out)
        typer.echo(
            f"ref-error on {len(evals)} held-out seeds (point estimates; for intervals sweep the grids with "
            "--metric ref-error): " + ", ".join(f"{k} {v:.4g}" for k, v in res.items())
        )


@app.command("score-error")
def score_error_cmd(
    model: Annotated[str, typer.Argument(help="Built-in name, registry name, path or URL.")],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Held-out images: a folder, .zip or .npz, or digits[-data][:heldout|train|all] (bare: heldout).",
        ),
    ],
    levels: Annotated[
        int, typer.Option("--levels", help="Noise levels, log-spaced over the model's range.", min=1)
    ] = 13,
    repeats: Annotated[int, typer.Option("--repeats", help="Noise draws per image and level.", min=1)] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the noise draws.", min=0)] = 0,
    plot: Annotated[Path | None, typer.Option("--plot", help="Also plot the loss against sigma (PNG).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    batch: Annotated[int, typer.Option("--batch", help="Images per batch.", min=1)] = 256,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --plot file.")] = False,
    offline: Annotated[bool, typer.Option(help="Never touch the network to fetch MODEL.")] = False,
) -> None:
    """Held-out denoising loss per sigma, weighted as EDM trains (the network's training error).

    Example: diffbench score-error digits-edm --data digits:heldout --plot loss.png
    """
    from diffbench.device import check_device
    from diffbench.metrics.score_error import default_levels, score_error
    from diffbench.models.load import load

    if plot is not None:
        _check_plot(plot, overwrite=overwrite)
    images, label = _images(data, batch)
    dev = check_device(device)
    denoiser = load(model, device="cpu", offline=offline)
    lo, hi = float(denoiser.sigma_min), float(denoiser.sigma_max)
    lo, hi = max(lo, 0.002), min(hi, 80.0)
    res = score_error(
        denoiser,
        images,
        sigmas=default_levels(lo, hi, levels),
        repeats=repeats,
        seed=seed,
        device=dev,
        source=label,
    )
    if as_json:
        typer.echo(json.dumps({"model": model, **res.to_dict()}, indent=2))
    else:
        typer.echo(f"{model} on {label}: {res.n} images x {res.repeats} noise draws, sigma_data {res.sigma_data:g}")
        typer.echo(f"{'sigma':>10} {'weighted loss':>14} {'± s.e.':>9} {'mse/dim':>10}")
        for s, w, e, m in zip(res.sigmas, res.weighted, res.weighted_se, res.mse, strict=True):
            typer.echo(f"{s:>10.4g} {w:>14.4f} {e:>9.4f} {m:>10.4g}")
        typer.echo(f"EDM-weighted held-out loss (ln sigma ~ N(-1.2, 1.2^2)): {res.total:.4f} ± {res.total_se:.4f}")
    if plot is not None:
        _plot(res, plot, title=f"{model} on {label}")


def _check_plot(plot: Path, *, overwrite: bool) -> None:
    """Before any work: --plot ends in .png, its folder exists and is writable, and an existing file needs
    --overwrite (ConfigError / OutputExistsError, one line each)."""
    from diffbench.errors import ConfigError
    from diffbench.io import check_output

    if plot.suffix.lower() != ".png":
        raise ConfigError(f"--plot {plot}: the plot is a PNG file; give a path ending in .png")
    if plot.is_dir():
        raise ConfigError(f"--plot {plot} is a folder; give a file path ending in .png")
    if not plot.parent.is_dir():
        raise ConfigError(f"--plot {plot}: the folder {plot.parent} does not exist")
    check_output(plot, overwrite=overwrite)


def _images(data: str, batch: int):
    """(uint8 NCHW batches, label) of --data: a digits split (digits[-data][:heldout|train|all], bare: heldout)
    or an image source; one resolver with fit-prior, --kl-data and ideal: (diffbench.priors.builtin_split)."""
    import torch

    from diffbench.metrics.sources import iter_uint8
    from diffbench.priors import builtin_split, open_data_source

    split = builtin_split(data, default="heldout")
    if split is not None:
        from diffbench.models.builtin import digits_data

        imgs, _ = digits_data().split(split)
        t = torch.from_numpy(imgs)
        return [t[i : i + batch] for i in range(0, len(t), batch)], data
    src = open_data_source(data)
    return iter_uint8(src, batch=batch), src.label


def _plot(res, path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(res.sigmas, res.weighted, yerr=res.weighted_se, marker="o", ms=3, capsize=2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sigma")
    ax.set_ylabel("lambda(sigma) x MSE per dim")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
