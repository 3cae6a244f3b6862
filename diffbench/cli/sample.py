"""`diffbench sample`: run one sampler spec over seeds and write PNGs or an npz with a provenance sidecar."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from diffbench.cli.app import app


class Endpoint(str, Enum):
    edm = "edm"
    sigma_min = "sigma_min"


class Policy(str, Enum):
    exact = "exact"
    nearest = "nearest"
    floor = "floor"


class Dtype(str, Enum):
    float64 = "float64"
    float32 = "float32"


@app.command("sample")
def sample_cmd(
    model: Annotated[str, typer.Argument(help="Built-in name (gmm, ideal), registry name, path or URL.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="A folder for PNGs, or a file ending in .npz.")],
    seeds: Annotated[str, typer.Option(help="Seeds: '0-63' or '0,5,10-12'.")] = "0-63",
    solver: Annotated[str, typer.Option(help="Solver name (see `diffbench solvers`).")] = "heun",
    schedule: Annotated[str, typer.Option(help="Sigma grid (see `diffbench schedules`), or file:PATH.")] = "edm",
    nfe: Annotated[int | None, typer.Option(help="Exact network evaluations per sample.", min=1)] = None,
    steps: Annotated[int | None, typer.Option(help="Step count instead of --nfe (default 18).", min=1)] = None,
    nfe_policy: Annotated[Policy, typer.Option(help="When --nfe is unreachable: exact refuses.")] = Policy.exact,
    endpoint: Annotated[
        Endpoint, typer.Option(help="edm: end with a step to 0; sigma_min: stop there.")
    ] = Endpoint.edm,
    denoise_to_zero: Annotated[bool, typer.Option(help="With --endpoint sigma_min: one final step to 0.")] = False,
    sigma_min: Annotated[float | None, typer.Option(help="Lowest sigma of the grid.")] = None,
    sigma_max: Annotated[float | None, typer.Option(help="Highest sigma of the grid.")] = None,
    rho: Annotated[float | None, typer.Option(help="rho of the edm grid (default 7).")] = None,
    sigma_t: Annotated[str, typer.Option(help="sigma(t) of EDM's ODE: linear, vp, ve.")] = "linear",
    scaling: Annotated[str, typer.Option(help="s(t) of EDM's ODE: none, vp.")] = "none",
    alpha: Annotated[float | None, typer.Option(help="Heun family: 1 Heun, 0.5 midpoint.")] = None,
    churn: Annotated[float | None, typer.Option("--churn", help="EDM S_churn (total over the run).")] = None,
    churn_per_step: Annotated[float | None, typer.Option(help="EDM gamma per step, independent of N.")] = None,
    s_min: Annotated[float | None, typer.Option("--s-min", help="EDM S_min.")] = None,
    s_max: Annotated[float | None, typer.Option("--s-max", help="EDM S_max.")] = None,
    s_noise: Annotated[float | None, typer.Option("--s-noise", help="EDM S_noise.")] = None,
    eta: Annotated[float | None, typer.Option(help="Ancestral / DDIM noise (0 deterministic).")] = None,
    order: Annotated[int | None, typer.Option(help="Order of a multistep/UniPC solver.")] = None,
    lower_order_final: Annotated[
        str | None,
        typer.Option(help="Multistep: lower orders on the last steps: always, never, or N (only below N steps)."),
    ] = None,
    afs: Annotated[bool, typer.Option("--afs", help="Analytic first step: saves one NFE (multistep).")] = False,
    variant: Annotated[
        str | None, typer.Option(help="UniPC B(h): bh2 or bh1; dpmpp-3m / dpm-solver-3m: published or taylor.")
    ] = None,
    prediction: Annotated[str | None, typer.Option(help="UniPC form: data or noise.")] = None,
    restart_n: Annotated[int | None, typer.Option(help="Restart N_Restart: grid points per restart (3).")] = None,
    restart_k: Annotated[int | None, typer.Option(help="Restart K: number of restarts (2).")] = None,
    restart_tmin: Annotated[float | None, typer.Option(help="Restart t_min: where to restart (0.06).")] = None,
    restart_tmax: Annotated[float | None, typer.Option(help="Restart t_max: sigma to jump up to (0.30).")] = None,
    restart_gamma: Annotated[float | None, typer.Option(help="Restart: churn on inner steps (0; paper 0.05).")] = None,
    noise: Annotated[
        str,
        typer.Option(
            help="Step noise: independent (EDM's stream) or brownian (a per-seed "
            "Brownian path, refined by an NFE sweep)."
        ),
    ] = "independent",
    class_: Annotated[int | None, typer.Option("--class", help="Fixed class of a conditional model.")] = None,
    batch: Annotated[int, typer.Option(help="Batch size.", min=1)] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    dtype: Annotated[Dtype, typer.Option(help="Sampler state dtype.")] = Dtype.float64,
    grid: Annotated[Path | None, typer.Option(help="Also write an image grid PNG here.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    offline: Annotated[bool, typer.Option(help="Never touch the network to fetch MODEL.")] = False,
) -> None:
    """Sample images at an exact NFE budget.

    Example: diffbench sample gmm --solver heun --schedule edm --nfe 35 --seeds 0-63 --out samples/
    """
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from diffbench.errors import DiffbenchError
    from diffbench.io import ImageSink, check_output, grid_image, quantize
    from diffbench.models.load import load
    from diffbench.sampling.run import Sampler, iter_batches
    from diffbench.sampling.spec import SamplerSpec
    from diffbench.seeds import parse_seeds

    err = Console(stderr=True)
    seed_list = parse_seeds(seeds)
    check_output(out, overwrite=overwrite)
    if grid is not None:
        check_output(grid, overwrite=overwrite)
    spec = SamplerSpec.make(
        solver=solver,
        schedule=schedule,
        nfe=nfe,
        steps=steps,
        nfe_policy=nfe_policy.value,
        endpoint=endpoint.value,
        denoise_to_zero=denoise_to_zero,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        rho=rho,
        sigma_t=sigma_t,
        scaling=scaling,
        alpha=alpha,
        S_churn=churn,
        churn_per_step=churn_per_step,
        S_min=s_min,
        S_max=s_max,
        S_noise=s_noise,
        eta=eta,
        order=order,
        lower_order_final=lower_order_final,
        analytic_first_step=afs or None,
        variant=variant,
        prediction=prediction,
        restart_n=restart_n,
        restart_k=restart_k,
        restart_tmin=restart_tmin,
        restart_tmax=restart_tmax,
        restart_gamma=restart_gamma,
        noise=noise,
        dtype=dtype.value,
    )
    from diffbench.cli.checkpoints import download_progress

    with download_progress(f"fetch {model}", console=err) as fetch_bar:
        denoiser = load(model, device="cpu", offline=offline, progress=fetch_bar)
    run = Sampler(denoiser, spec, device=device)
    run.class_indices(class_, len(seed_list))
    p = run.plan
    merged = (
        f", {p.merged_steps} merged by round_sigma ({p.distinct_levels} distinct sigma levels)"
        if p.merged_steps
        else ""
    )
    err.print(
        f"{p.solver} on {p.schedule}: {p.steps} steps, NFE {p.nfe} per sample, sigma {p.sigma_max:.4g} -> "
        f"{p.sigma_min:.4g}, endpoint {p.endpoint}{merged}; device {run.device}",
        soft_wrap=True,
    )
    sink = ImageSink(out)
    kept: list[torch.Tensor] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bar:
        images_task = bar.add_task("images", total=len(seed_list))
        steps_task = bar.add_task("steps ", total=p.steps)

        def progress(ev) -> None:
            bar.update(steps_task, completed=ev.step)
            bar.update(images_task, completed=ev.images_done)

        try:
            for b in iter_batches(
                denoiser, seeds=seed_list, class_labels=class_, batch=batch, sampler=run, progress=progress
            ):
                sink.write(b.images, b.seeds, b.class_labels)
                if grid is not None and sum(len(k) for k in kept) < 1024:
                    kept.append(quantize(b.images))
        except DiffbenchError as exc:
            sink.close(run.provenance(seed_list), complete=False, error=str(exc))
            raise
    sink.close(run.provenance(seed_list), complete=True)
    if grid is not None and kept:
        grid.parent.mkdir(parents=True, exist_ok=True)
        grid_image(torch.cat(kept)).save(grid)
    err.print(f"wrote {len(seed_list)} images to {out}")
