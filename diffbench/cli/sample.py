"""`diffbench sample`: run one sampler spec over seeds and write PNGs or an npz with a provenance sidecar."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from diffbench.cli.app import app
from diffbench.cli.options import sampler_options


@app.command("sample")
@sampler_options()
def sample_cmd(
    model: Annotated[str, typer.Argument(help="Built-in name (gmm, ideal), registry name, path or URL.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="A folder for PNGs, or a file ending in .npz.")],
    seeds: Annotated[str, typer.Option(help="Seeds: '0-63' or '0,5,10-12' (0 <= seed < 2^32).")] = "0-63",
    class_: Annotated[int | None, typer.Option("--class", help="Fixed class of a conditional model.")] = None,
    batch: Annotated[int, typer.Option(help="Batch size.", min=1)] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    grid: Annotated[Path | None, typer.Option(help="Also write an image grid PNG here.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    offline: Annotated[bool, typer.Option(help="Never touch the network to fetch MODEL.")] = False,
    *,
    sampler: dict[str, Any],
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
    spec = SamplerSpec.make(**sampler)
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
