"""`diffbench sample`: run one sampler spec over seeds and write PNGs or an npz with a provenance sidecar."""

from __future__ import annotations

import math
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
    batch: Annotated[
        str, typer.Option(help="Batch size, or auto (CUDA: the largest that fits, remembered; CPU: 64).")
    ] = "64",
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

    from diffbench.cli.ranks import join, load_on_ranks, rank_device
    from diffbench.device import check_device
    from diffbench.io import (
        ImageSink,
        check_output,
        finished_shards,
        grid_image,
        quantize,
        run_identity,
        save_image_atomic,
    )
    from diffbench.models.load import load
    from diffbench.sampling.run import Sampler, iter_batches
    from diffbench.sampling.spec import SamplerSpec
    from diffbench.seeds import parse_seeds

    err = Console(stderr=True)
    # everything that can be refused is refused before the first network call and before any output exists
    seed_list = parse_seeds(seeds)
    from diffbench.sampling.autobatch import AUTO, parse_batch

    batch_size = parse_batch(batch)
    spec = SamplerSpec.make(**sampler)
    w = join()  # torchrun: the ranks' commands compared before any work (one process: nothing)
    if w.main and str(spec.prior or "").startswith("ideal:"):  # issue 22: the table's footnote, here one line
        from diffbench.priors import IDEAL_NOTE

        typer.echo(f"warning: {IDEAL_NOTE}", err=True)
    if w.size > 1 and batch_size == AUTO:  # every rank must cut the seeds into the same batches
        from diffbench.errors import ConfigError

        raise ConfigError("--batch auto does not apply under torchrun: give every rank the same --batch N")
    dev = check_device(rank_device(device, w))

    def check_outputs() -> None:  # rank 0 alone writes the images and the sidecar
        if out.suffix != ".npz" and out.suffix and not out.is_dir():
            from diffbench.errors import ConfigError

            raise ConfigError(f"--out {out}: an output is a folder of PNGs (no extension) or a file ending in .npz")
        _refuse_reading_what_is_written(spec, out, grid)
        check_output(out, overwrite=overwrite)
        if grid is not None:
            if grid.suffix.lower() != ".png":
                from diffbench.errors import ConfigError

                raise ConfigError(f"--grid {grid}: the grid is a PNG file; give a path ending in .png")
            check_output(grid, overwrite=overwrite)

    w.on_main("checking the output paths", check_outputs)
    from diffbench.cli.checkpoints import download_progress

    def load_model() -> Any:
        with download_progress(f"fetch {model}", console=err) as fetch_bar:
            return load(model, device="cpu", offline=offline, progress=fetch_bar)

    denoiser = load_on_ranks(w, load_model)

    def plan() -> Sampler:
        run = Sampler(denoiser, spec, device=dev)
        run.check_seeds(seed_list)
        run.class_indices(class_, len(seed_list))
        return run

    run = w.everywhere("planning the sampler", plan)
    if not w.main:
        _follow(w, run, seed_list, class_, int(batch_size))
        return
    if spec.schedule.startswith("file:"):  # a grid tuned for another solver or model: one warning line
        from diffbench.sweep.tune import warn_tuned_grid

        warn_tuned_grid(denoiser, spec)
    p = run.plan
    merged = (
        f", {p.merged_steps} merged by round_sigma ({p.distinct_levels} distinct sigma levels)"
        if p.merged_steps
        else ""
    )
    grid_text = (
        " -> ".join(f"{float(v):.4g}" for v in (p.sigmas[0], p.sigmas[-2], p.sigmas[-1]))
        if len(p.sigmas) > 2
        else " -> ".join(f"{float(v):.4g}" for v in p.sigmas)
    )
    provenance = dict(run.provenance(seed_list), command=_command_line(), class_=class_)
    provenance["class"] = provenance.pop("class_")
    if w.size > 1:
        provenance["processes"] = w.size  # not in the run's identity: the images are those of one process
    if len(run.shape) != 3 or run.shape[0] not in (1, 3):
        from diffbench.errors import ConfigError

        w.broadcast(None, what="starting")  # the others stop too (they wait for the resume point)
        raise ConfigError(
            f"{model} gives samples of shape {tuple(run.shape)}, not images with 1 or 3 channels; "
            "use the Python API (diffbench.sample) for it"
        )
    # what determines the images bit for bit (not the time or the command line): an interrupted .npz run of the
    # same identity is resumed after its last finished shard, batches aligned as in an uninterrupted run
    env = provenance["environment"]
    identity = run_identity(
        {
            **{k: provenance[k] for k in ("model", "spec", "solver_options", "plan", "seeds", "dtype", "class")},
            "versions": {k: env.get(k) for k in ("diffbench", "torch", "cuda")},
            "device": env.get("generator_device"),
            "batch": batch_size,
        }
    )
    try:
        done = None if overwrite or out.suffix != ".npz" else finished_shards(out, identity, seed_list)
    except BaseException:
        w.broadcast(None, what="starting")  # the other ranks stop too
        raise
    w.broadcast(len(done.seeds) if done is not None else 0, what="starting")
    err.print(
        f"{p.solver} on {p.schedule}: {p.steps} steps, NFE {p.nfe} per sample{_guidance_text(run.guidance)}, "
        f"sigma {grid_text}, "
        f"endpoint {p.endpoint}{merged}; device {run.device}",
        soft_wrap=True,
    )
    sink = ImageSink(out, provenance=provenance, overwrite=overwrite, identity=identity, resume=done)
    kept: list[torch.Tensor] = []
    start = len(done.seeds) if done is not None else 0
    if start:
        err.print(
            f"resuming {out}: {start} of {len(seed_list)} images already finished in {done.shards[0].parent}",
            soft_wrap=True,
        )
        if grid is not None:
            kept.append(torch.from_numpy(done.images()[:1024]).permute(0, 3, 1, 2))
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bar:
        images_task = bar.add_task("images", total=len(seed_list), completed=start)
        steps_task = bar.add_task("steps ", total=p.steps)

        def progress(ev) -> None:
            bar.update(steps_task, completed=ev.step)
            bar.update(images_task, completed=start + ev.images_done)

        todo = seed_list[start:]
        fit = _batch_fit(run, denoiser, len(todo), err) if batch_size == AUTO else None
        size = fit.size if fit is not None else int(batch_size)
        try:
            batches = (
                iter_batches(
                    denoiser, seeds=todo, class_labels=class_, batch=size, sampler=run, progress=progress, fit=fit
                )
                if w.size == 1
                else _ranked_batches(w, run, todo, class_, size, lambda n: bar.update(images_task, completed=start + n))
            )
            for b in batches if todo else ():
                sink.write(b.images, b.seeds, b.class_labels)
                if grid is not None and sum(len(k) for k in kept) < 1024:
                    kept.append(quantize(b.images))
        except BaseException as exc:  # every exit path leaves a sidecar that says what finished
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc) or type(exc).__name__
            sink.close(complete=False, error=reason)
            if len(sink.seeds):
                err.print(f"kept {len(sink.seeds)} finished images in {out} (sidecar marked incomplete)")
            raise
    sink.close(complete=True)
    if grid is not None and kept:
        save_image_atomic(grid_image(torch.cat(kept)), grid)
    err.print(f"wrote {len(seed_list)} images to {out}")


def _guidance_text(g: Any) -> str:
    """', guidance W (null|MODEL)[ on sigma (LO, HI]], classifier guidance W (NAME)' for the header line when
    guidance acts; '' without (the unguided header is unchanged)."""
    if g is None or not g.any_active:
        return ""
    parts = []
    if g.active:
        where = f" on sigma ({g.lo:g}, {g.hi:g}]" if (g.lo, g.hi) != (0.0, math.inf) else ""
        parts.append(f"guidance {g.weight:g} ({g.guide}){where}")
    if g.classifier_active:
        parts.append(f"classifier guidance {g.classifier_weight:g} ({g.classifier})")
    return ", " + ", ".join(parts)


def _batch_fit(run: Any, denoiser: Any, n_seeds: int, err: Any) -> Any:
    """--batch auto: the remembered or starting size on this device, said in one line (sampling/autobatch.py)."""
    from diffbench.sampling.autobatch import BatchFit, describe, fit_key
    from diffbench.sweep.bench import model_sha256

    fit = BatchFit.auto(fit_key(model_sha256(denoiser), run.device, run.spec, run.shape), run.device, n_seeds=n_seeds)
    err.print(describe(fit, run.device), soft_wrap=True)
    return fit


def _chunks(n: int, batch: int) -> list[tuple[int, int]]:
    return [(i, min(i + batch, n)) for i in range(0, n, batch)]  # as iter_batches cuts them


def _ranked_batches(w: Any, run: Any, todo: list[int], class_: int | None, batch: int, shown: Any = None) -> Any:
    """torchrun: the batches of one process, dealt out in rounds (rank r runs batch r of a round); on rank 0
    they come back in seed order, on the CPU; the other ranks yield nothing."""
    from diffbench.sampling.run import Batch

    labels = run.class_indices(class_, len(todo))
    chunks = _chunks(len(todo), batch)
    for r0 in range(0, len(chunks), w.size):
        round_ = chunks[r0 : r0 + w.size]

        def produce(round_: list[tuple[int, int]] = round_) -> Any:
            a, b = round_[w.rank]
            out = run.run(todo[a:b], class_labels=None if labels is None else labels[a:b])
            lab = None if out.class_labels is None else out.class_labels.detach().cpu()
            return out.images.detach().cpu(), list(out.seeds), lab

        got = w.exchange(produce if w.rank < len(round_) else None, what="gathering a round of images")
        for images, seeds, lab in got:
            yield Batch(images=images, seeds=seeds, class_labels=lab, nfe=run.plan.nfe)
        if shown is not None and w.main:
            shown(round_[-1][1])


def _follow(w: Any, run: Any, seed_list: list[int], class_: int | None, batch: int) -> None:
    """A rank > 0 of a torchrun launch: sample its share of each round from rank 0's resume point."""
    start = w.broadcast(None, what="starting")
    if start is None:  # rank 0 refused the run
        return
    for _ in _ranked_batches(w, run, seed_list[start:], class_, batch):
        pass


def _refuse_reading_what_is_written(spec: Any, out: Path, grid: Path | None) -> None:
    """A `file:` schedule or prior that is also an output (say `--out grid5.npz` beside `grid5.json`, whose
    sidecar is grid5.json) would be overwritten by this run: refused even with --overwrite."""
    from diffbench.errors import ConfigError
    from diffbench.io import sidecar_path

    written = {p.resolve() for p in (out, sidecar_path(out), grid) if p is not None}
    for flag, value in (("--schedule", spec.schedule), ("--prior", getattr(spec, "prior", None))):
        if isinstance(value, str) and value.startswith("file:") and Path(value[5:]).resolve() in written:
            raise ConfigError(
                f"{flag} {value} is also an output of this run (--out {out} writes {sidecar_path(out)}); "
                "choose another --out"
            )


def _command_line() -> str:
    import shlex
    import sys

    return " ".join(shlex.quote(a) for a in ["diffbench", *sys.argv[1:]])
