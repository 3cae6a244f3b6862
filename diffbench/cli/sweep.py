"""`diffbench sweep`, `diffbench report`, `diffbench compare`: thin commands over diffbench.sweep."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from diffbench.cli.app import app
from diffbench.cli.options import SAMPLER_OPTIONS, flag_message, sampler_options

DEFAULT_STORE = Path("diffbench-sweep.db")
DEFAULT_SEEDS = "0-199"  # a quick first answer (FD needs n > dims: 64 digits features, 192 gmm values)


def _names() -> dict[str, str]:
    """Spec keyword -> flag name without dashes (labels read 'churn=40')."""
    return {o.key: o.flag.lstrip("-") for o in SAMPLER_OPTIONS}


def _aliases() -> dict[str, str]:
    """Config keys: flag names (churn, nfe-policy, nfe_policy) -> spec keywords."""
    out: dict[str, str] = {}
    for o in SAMPLER_OPTIONS:
        name = o.flag.lstrip("-")
        out[name] = o.key
        out[name.replace("-", "_")] = o.key
    return out


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, stderr=stderr, width=None if stream.isatty() else 160, highlight=False)


def rich_table(t: Any) -> Any:
    """The terminal table of a report.Table: rows the series, columns the x axis (NFE), best bold with '*'."""
    from rich.table import Table as RichTable

    from diffbench.sweep.report import _caption, fmt_value

    rt = RichTable(title=_caption(t), title_justify="left")
    rt.add_column("config")
    rt.add_column("convention", style="dim")
    for col in t.columns:
        rt.add_column(t.header(col), justify="right")
    for cfg in t.configs:
        cells = []
        for col in t.columns:
            e = t.entry(cfg, col)
            s = fmt_value(e)
            cells.append(f"[bold]{s} *[/bold]" if e is not None and e.best else s)
        rt.add_row(cfg, t.conventions.get(cfg, ""), *cells)
    return rt


def _layout_options(x: str | None, series: str | None) -> dict[str, Any]:
    """--x / --series as report.table's keywords (flag names, as the user wrote them)."""
    return {"x": x, "series": _split(series), "names": _names()}


def _print_tables(
    cells: list[dict[str, Any]],
    metrics: list[str] | None = None,
    *,
    paired: bool = True,
    x: str | None = None,
    series: str | None = None,
    floor: bool = False,
) -> None:
    from rich.markup import escape

    from diffbench.sweep.report import add_floor, metrics_in, notes_below, paired_rows, table

    con = _console()
    lay = _checked_layout(cells, x, series)
    for m in metrics or metrics_in(cells):
        t = table(cells, m, **lay)
        if floor:
            add_floor(t, cells)
        con.print(rich_table(t))
        for line in notes_below(t):
            con.print(f"  {escape(line)}", soft_wrap=True)
        if paired:
            rows = paired_rows(cells, m, table_=t)
            for r in rows:
                con.print(f"  {r}")
    skipped = [c for c in cells if c["status"] == "skipped"]
    if skipped:
        con.print(f"skipped {len(skipped)} cell(s) (shown as —):")
        for c in skipped:
            reason = flag_message(str(c.get("skip_reason")))
            con.print(f"  {c['config']} at NFE {c.get('nfe_requested')}: {reason}", soft_wrap=True, markup=False)


def _checked_layout(cells: list[dict[str, Any]], x: str | None, series: str | None) -> dict[str, Any]:
    """The layout for the end of a sweep: when the cells (a store that holds other sweeps too) do not fit
    --x/--series, say why on stderr and fall back to the NFE layout rather than fail after the work is done."""
    from diffbench.errors import ConfigError
    from diffbench.sweep.report import layout

    lay = _layout_options(x, series)
    if x is None and series is None:
        return lay
    try:
        layout(cells, **lay)
    except ConfigError as exc:
        _console(stderr=True).print(f"tables by NFE instead: {exc}", soft_wrap=True, markup=False)
        return _layout_options(None, None)
    return lay


def _check_grid_layout(grid: Any, x: str | None, series: str | None) -> None:
    """--x/--series against the grid's axes before any cell runs (one error line, nothing computed)."""
    if x is None and series is None:
        return
    from diffbench.sweep.report import check_layout

    names = _names()
    axes = {names.get(k, k): v for k, v in grid.axes.items() if len(v) > 1}
    constant = [names.get(k, k) for k, v in grid.axes.items() if len(v) == 1] + ["solver", "schedule", "nfe"]
    check_layout(axes, constant=constant, **_layout_options(x, series))


def _write_reports(cells: list[dict[str, Any]], out: Path, *, plot: bool, x: str | None, series: str | None) -> Any:
    """write_reports with the sweep's layout; what it skipped (a plot without matplotlib) said on stderr."""
    from diffbench.sweep.report import write_reports

    written = write_reports(cells, out, plot=plot, **_checked_layout(cells, x, series))
    err = _console(stderr=True)
    for line in written.skipped:
        err.print(f"skipped {line}", soft_wrap=True, markup=False)
    return written


X_HELP = "Axis of the table columns and the plot's x: nfe (default) or any option that varies across the cells."
SERIES_HELP = "Comma list of axes for the table rows / plot lines (default: every other axis that varies)."


class _Display:
    """The live view on stderr: the grid with each cell's state, the running cell, images/s, time left."""

    def __init__(self, grid: Any, n_images: int):
        from rich.console import Console

        self.grid, self.n = grid, n_images
        self.status: dict[int, str] = {i: ("skipped" if c.skipped else "waiting") for i, c in enumerate(grid.cells)}
        self.current: tuple[int, int, float] | None = None
        self.rate: float | None = None  # seconds per image per NFE, measured
        self.t0 = time.perf_counter()
        self.console = Console(stderr=True)
        self.live = None
        if sys.stderr.isatty():
            from rich.live import Live

            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> _Display:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def _left(self) -> float | None:
        if self.rate is None:
            return None
        work = 0.0
        for i, c in enumerate(self.grid.cells):
            if self.status[i] in ("waiting", "running") and c.plan is not None:
                done = self.current[1] if self.current and self.current[0] == i else 0
                work += (self.n - done) * c.plan.nfe
        return work * self.rate

    def _render(self) -> Any:
        from rich.table import Table as RichTable

        rt = RichTable(box=None, show_header=True, pad_edge=False)
        rt.add_column("cell")
        rt.add_column("NFE", justify="right")
        rt.add_column("state")
        style = {"done": "green", "cached": "green", "running": "bold yellow", "skipped": "dim", "waiting": ""}
        style["other shard"] = "dim"
        for i, c in enumerate(self.grid.cells):
            st = self.status[i]
            text = st
            if st == "running" and self.current is not None:
                _, done, ips = self.current
                text = f"running {done}/{self.n}" + (f", {ips:.1f} img/s" if math.isfinite(ips) else "")
            rt.add_row(c.config, str(c.nfe_spent or c.nfe or ""), f"[{style[st]}]{text}[/]" if style[st] else text)
        left = self._left()
        elapsed = time.perf_counter() - self.t0
        rt.caption = f"elapsed {elapsed:.0f} s" + (f", about {left:.0f} s left" if left is not None else "")
        return rt

    def __call__(self, ev: Any) -> None:
        i = ev.index
        if ev.kind == "start":
            self.status[i] = "running"
            self.current = (i, ev.resumed_from, math.nan)
            if self.live is None:
                resumed = f" (resuming after {ev.resumed_from} images)" if ev.resumed_from else ""
                self.console.print(f"[{i + 1}/{ev.total}] {ev.cell.config} NFE {ev.cell.nfe_spent}{resumed}")
        elif ev.kind == "batch":
            p = ev.batch
            self.current = (i, p.images_done, p.images_per_s)
            if ev.cell.plan is not None and p.seconds > 0:
                self.rate = p.seconds / (p.images_done * ev.cell.plan.nfe)
        elif ev.kind == "done":
            self.status[i] = "done"
            r = ev.result
            if r is not None and r.wall_s > 0:
                self.rate = r.wall_s / (self.n * r.nfe)
            if self.live is None and r is not None:
                vals = ", ".join(f"{k} {v['value']:.4g}" for k, v in r.metrics.items() if v.get("value") is not None)
                self.console.print(f"      done in {r.wall_s:.1f} s ({r.images_per_s:.1f} img/s): {vals}")
        elif ev.kind == "cached":
            self.status[i] = "cached"
            if self.live is None:
                self.console.print(
                    f"[{i + 1}/{ev.total}] {ev.cell.config} NFE {ev.cell.nfe_spent}: already in the store"
                )
        elif ev.kind == "skipped":
            self.status[i] = "skipped"
        elif ev.kind == "elsewhere":
            self.status[i] = "other shard"
        if self.live is not None:
            self.live.update(self._render())


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [p.strip() for p in str(text).split(",") if p.strip()]


@app.command("sweep")
@sampler_options(axes=True)
def sweep_cmd(
    model: Annotated[
        str | None,
        typer.Argument(help="Model (built-in name, registry name, path, URL); default: the built-in default model."),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help=f"Seeds shared by every cell, e.g. '0-49999' (default {DEFAULT_SEEDS}).")
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            help="Comma list: fid, fd, kid, pr, is, ref-error, ref-fd, prior-kl, fd-exact, sw. Default: what the "
            "model supports without downloads (built-in digits models: fd in the digits feature space; analytic "
            "models: fd-exact, sw).",
        ),
    ] = None,
    ref: Annotated[str | None, typer.Option("--ref", help="Reference statistics or images (fid, fd, kid, pr).")] = None,
    extractor: Annotated[
        str | None, typer.Option("--extractor", help="Feature space of fd/kid/pr: a registered name or module:factory.")
    ] = None,
    inception_weights: Annotated[
        Path | None, typer.Option("--inception-weights", help="Local Inception weights for fid.")
    ] = None,
    blocks: Annotated[
        int | None,
        typer.Option(
            help="Seed blocks K per cell (default: about 20, a divisor of the seeds): "
            "the jackknife interval of the value of all seeds, paired differences.",
            min=1,
        ),
    ] = None,
    store: Annotated[
        Path | None, typer.Option("--store", help=f"Results store (SQLite); default {DEFAULT_STORE}.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Also write tables (md, csv, json, tex), plots and a JSON export here (without a MODEL: a folder "
            "named after the store, diffbench-sweep/ for diffbench-sweep.db).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an output folder that holds another store's outputs.")
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="A sweep TOML file: settings, tables axes and fixed, and per-cell overrides (tables named cell).",
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe",
            help="Run a published table (see `diffbench recipes`); a smaller --seeds is a quick look, marked as such.",
        ),
    ] = None,
    class_: Annotated[int | None, typer.Option("--class", help="Fixed class of a conditional model.")] = None,
    eval_classifier: Annotated[
        str | None,
        typer.Option(
            "--eval-classifier",
            help="Clean classifier of class-accuracy / inv-prob: package.module:factory (a module x in [-1, 1] "
            "-> logits); default: the built-in digits classifier.",
        ),
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option(help="Batch size, or auto (CUDA: the largest that fits; CPU: 64); not part of a cell's identity."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda[:N].")] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            help="Checkpoint a running cell every N batches (and at each block's end); default: every batch "
            "unless checkpoints would cost more than ~10% of the run.",
            min=1,
        ),
    ] = None,
    save_images: Annotated[
        Path | None, typer.Option("--save-images", help="Also write every cell's images (PNG) under this folder.")
    ] = None,
    allow_small_n: Annotated[
        bool, typer.Option("--allow-small-n", help="Compute Fréchet distances with fewer samples than dims + 1.")
    ] = False,
    kl_data: Annotated[
        str | None,
        typer.Option(
            "--kl-data",
            help="Data of the prior-kl metric: digits-data or images (default for the digits models: digits-data).",
        ),
    ] = None,
    ref_steps: Annotated[
        int | None,
        typer.Option(
            "--ref-steps",
            help="Heun steps of the reference ODE solution of ref-error and ref-fd (networks; default 1024).",
            min=2,
        ),
    ] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="With --out: also the PNG/SVG plots.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the grid's rows as JSON instead of tables.")] = False,
    x: Annotated[str | None, typer.Option("--x", help=X_HELP)] = None,
    series: Annotated[str | None, typer.Option("--series", help=SERIES_HELP)] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="I/N: run only shard I of N (numbered from 0) of the grid's cells (dealt out by NFE and cell "
            "identity: the same split on every machine) into this store; 'diffbench merge' combines the stores.",
        ),
    ] = None,
    *,
    sampler: dict[str, list[Any]],
) -> None:
    """Run a grid of sampler settings (any sampler option may be a comma list) into a resumable store.

    Examples: diffbench sweep --nfe 18,35,79;
    diffbench sweep gmm --solver heun,dpmpp-3m --nfe 5,10,19,35 --seeds 0-999 --blocks 4 --out results/
    """
    from diffbench.errors import ConfigError
    from diffbench.seeds import parse_seeds
    from diffbench.sweep import default_model, default_setup
    from diffbench.sweep.grid import load_config
    from diffbench.sweep.runner import run_sweep
    from diffbench.sweep.store import (
        Store,
        check_out_folder,
        check_store_path,
        check_writable_folder,
        default_out_folder,
    )

    the_recipe = None
    if recipe is not None:
        from diffbench.recipes import get_recipe

        if config is not None:
            raise ConfigError("--recipe is a sweep config itself: give --recipe or --config, not both")
        the_recipe = get_recipe(recipe)
        config = the_recipe.path
    cfg = load_config(config, aliases=_aliases()) if config is not None else None
    settings = dict(cfg.settings) if cfg else {}

    def pick(cli: Any, key: str, default: Any) -> Any:
        return cli if cli is not None else settings.get(key, default)

    named = pick(model, "model", None)
    model = named or default_model()
    dflt = default_setup(named)
    seeds_text = str(pick(seeds, "seeds", dflt.get("seeds", DEFAULT_SEEDS)))
    metric_list = _split(metric) if metric is not None else settings.get("metrics")
    if isinstance(metric_list, str):
        metric_list = _split(metric_list)
    ref = pick(ref, "ref", None)
    extractor = pick(extractor, "extractor", None)
    picked = pick(blocks, "blocks", None)
    blocks = None if picked is None else int(picked)  # None: about 20, a divisor of the seeds (resolve_blocks)
    store_path = Path(pick(store, "store", DEFAULT_STORE))
    out = pick(out, "out", None)
    out_named_after_store = out is None and dflt.get("out") is not None
    if out_named_after_store:  # outputs belong to their store: b4.db -> b4/
        out = default_out_folder(store_path)
    class_ = pick(class_, "class", None)
    from diffbench.sampling.autobatch import AUTO, CPU_BATCH, parse_batch

    batch_size = parse_batch(pick(batch, "batch", 64))
    device = str(pick(device, "device", "auto"))
    axes = {k: v for k, v in dflt.get("axes", {}).items() if not (cfg and (k in cfg.axes or k in cfg.fixed))}
    axes.update(dict(cfg.axes) if cfg else {})
    axes.update(sampler)
    fixed = {k: v for k, v in (cfg.fixed if cfg else {}).items() if k not in axes}
    if inception_weights is not None and not inception_weights.exists():
        raise ConfigError(f"--inception-weights {inception_weights} does not exist")
    seed_list = parse_seeds(seeds_text)
    from diffbench.sweep.shard import parse_shard

    shard_of = None if shard is None else parse_shard(shard)
    from diffbench.cli.ranks import join, load_on_ranks, rank_device

    w = join(config)  # torchrun: the ranks' commands compared before any work (one process: nothing)
    device = rank_device(device, w)
    if w.size > 1 and batch_size == AUTO:  # every rank must cut each cell's seeds into the same batches
        raise ConfigError("--batch auto does not apply under torchrun: give every rank the same --batch N")

    def check_outputs() -> None:  # every output path is checked before anything is created (rank 0 writes)
        check_store_path(store_path)
        if out is not None:
            check_out_folder(out, store_path, overwrite=overwrite)
        if save_images is not None:
            check_writable_folder(save_images, f"--save-images {save_images}")

    w.on_main("checking the output paths", check_outputs)
    # after the outputs' checks: a registry model's reference statistics may be a download
    ref, extractor = _reference_and_space(model, ref, extractor)

    from diffbench.cli.checkpoints import download_progress

    err = _console(stderr=True)

    def load_model() -> Any:
        with download_progress(f"fetch {model}", console=err) as fetch_bar:
            from diffbench.models.load import load

            return load(model, device="cpu", progress=fetch_bar)

    denoiser = load_on_ranks(w, load_model)
    grid, bench = w.everywhere(
        "preparing the grid",
        lambda: _grid_and_bench(
            denoiser,
            axes,
            fixed,
            cfg,
            x,
            series,
            model_name=model,
            seeds=seed_list,
            metrics=metric_list,
            blocks=blocks,
            batch=CPU_BATCH if batch_size == AUTO else int(batch_size),
            device=device,
            ref=ref,
            extractor=extractor,
            weights_path=inception_weights,
            class_label=class_,
            allow_small_n=allow_small_n,
            eval_classifier=eval_classifier,
            kl_data=pick(kl_data, "kl_data", None),
            **({} if ref_steps is None else {"ref_steps": ref_steps}),
        ),
    )
    if ref_steps is not None and not {"ref-error", "ref-fd"} & set(bench.metrics):
        from diffbench.errors import ConfigError

        raise ConfigError("--ref-steps sets the reference ODE solution of ref-error and ref-fd; neither is asked for")
    w.agree("the reference statistics (sha256)", bench.ref_sha256)
    if save_images is not None:
        bench.save_images = _image_saver(save_images)
    if batch_size == AUTO:
        bench.batch_auto = True
        err.print(
            f"--batch auto on {bench.device.type}: "
            + (
                "each cell starts at the size remembered, else 4096, halved on out-of-memory"
                if bench.device.type == "cuda"
                else f"batch {CPU_BATCH} (no out-of-memory search off CUDA)"
            ),
            soft_wrap=True,
        )
    if not w.main:  # ranks > 0 sample their share of each cell's batches; rank 0 writes and prints
        run_sweep(bench, grid, None, checkpoint_every=checkpoint_every, shard=shard_of, world=w)
        return
    err.print(
        f"sweep: {len(grid.cells)} cells ({len(grid.skipped)} skipped) on {bench.model_name}, "
        f"{len(seed_list)} seeds in {bench.blocks} block(s), metrics {', '.join(bench.metrics)}; store {store_path}",
        soft_wrap=True,
    )
    if out_named_after_store:
        err.print(f"outputs go to {out}/, named after the store (--out chooses another folder)", soft_wrap=True)
    with Store(store_path) as st:
        with _Display(grid, len(seed_list)) as display:
            rows = run_sweep(
                bench, grid, st, on_event=display, checkpoint_every=checkpoint_every, shard=shard_of, world=w
            )
        if shard_of is not None:
            from diffbench.sweep.runner import shard_grid

            err.print(f"shard {shard_of}: {len(rows)} of the grid's {len(grid.cells)} cells are in {st.path}")
            grid = shard_grid(grid, bench, shard_of)  # the notes below are of this shard's cells
        _record_notes(st, grid, rows)
        published = _published(st, the_recipe, grid, rows, seeds_text) if the_recipe else None
        if as_json:
            from diffbench.sweep.store import to_json_text

            typer.echo(to_json_text(rows), nl=False)
            for line in _note_lines(grid, rows):
                err.print(line, soft_wrap=True, markup=False)
        else:
            _print_tables(rows, list(bench.metrics), x=x, series=series)
            con = _console()
            for line in _note_lines(grid, rows, footnotes=True):
                con.print(line, soft_wrap=True, markup=False)
        if published:
            (_console(stderr=True) if as_json else _console()).print("\n".join(published), soft_wrap=True, markup=False)
        if out is not None:
            _write_outputs(st, Path(out), plot=plot, err=err, x=x, series=series)
            if published:
                (Path(out) / "published.md").write_text("\n".join(published) + "\n")


def _published(st: Any, recipe: Any, grid: Any, rows: list[dict[str, Any]], seeds: str) -> list[str]:
    """--recipe: each measured value beside the published one, recorded under `published` in the cell's
    provenance (so `report` and the JSON export carry it), as text lines for the terminal and published.md."""
    from diffbench.recipes import comparison, comparison_lines
    from diffbench.seeds import parse_seeds

    quick = parse_seeds(seeds) != parse_seeds(recipe.seeds)
    table = comparison(recipe, list(grid.cells), rows, quick=quick)
    for row in rows:
        entries = [t for t in table if t["id"] == row["id"]]
        if entries:
            st.record_published(row["id"], entries)
            row["provenance"] = {**(row.get("provenance") or {}), "published": entries}
    return comparison_lines(recipe, table)


def _grid_and_bench(
    denoiser: Any, axes: dict[str, Any], fixed: dict[str, Any], cfg: Any, x: str | None, series: str | None, **kw: Any
) -> tuple[Any, Any]:
    """The grid (every axis value, every solver name checked first), the layout, then the bench (metrics)."""
    from diffbench.sweep.cell import prepare
    from diffbench.sweep.grid import check_cells, check_grid, make_grid

    grid = make_grid(denoiser, axes, fixed=fixed, overrides=cfg.overrides if cfg else (), names=_names())
    check_grid(grid)
    _check_grid_layout(grid, x, series)
    steered = any(c.spec is not None and c.spec.classifier_guidance is not None for c in grid.cells)
    bench = prepare(denoiser, steered=steered, **kw)
    check_cells(grid, denoiser, seeds=bench.seeds, device=bench.device, names=_names())  # before any store
    return grid, bench


def _record_notes(st: Any, grid: Any, rows: list[dict[str, Any]]) -> None:
    """Each grid cell's note (e.g. the same sampler as another churn value) under `note` in its provenance."""
    for cell, row in zip(grid.cells, rows):
        if row.get("status") != "done":
            continue
        st.annotate(row["id"], cell.note)
        prov = dict(row.get("provenance") or {})
        prov.pop("note", None)
        if cell.note:
            prov["note"] = cell.note
        row["provenance"] = prov


def _note_lines(grid: Any, rows: list[dict[str, Any]], *, footnotes: bool = False) -> list[str]:
    """What the tables cannot show: options that apply to some solvers only, and (unless the tables showed
    them as footnotes) cells that are one sampler."""
    lines = [f"not applicable: {text}" for text in grid.not_applicable]
    noted = [] if footnotes else [(c, r) for c, r in zip(grid.cells, rows) if c.note]
    if noted:
        lines.append(f"{len(noted)} cell(s) are the same sampler as another:")
        lines += [f"  {c.config} at NFE {c.nfe}: {c.note}" for c, _ in noted]
    return lines


def _write_outputs(st: Any, out: Path, *, plot: bool, err: Any, x: str | None, series: str | None) -> None:
    """Tables, plots and results.json into OUT, marked as this store's; a failure here keeps the store."""
    from diffbench.errors import DiffbenchError
    from diffbench.sweep.store import claim_out_folder

    try:
        claim_out_folder(out, st.path)
        written = _write_reports(st.export()["cells"], out, plot=plot, x=x, series=series)
        _standard_json(written)
        st.export_json(out / "results.json")
        claim_out_folder(out, st.path, [p.name for p in written if p.parent == out] + ["results.json"])
    except (OSError, DiffbenchError) as exc:
        raise DiffbenchError(
            f"writing the outputs to {out} failed ({exc}); every finished cell is kept in {st.path}: "
            f"'diffbench report {st.path} --out DIR' writes them again"
        ) from None
    err.print(f"wrote {len(written) + 1} files to {out}")


def _standard_json(paths: list[Path]) -> None:
    """Rewrite written .json tables as standard JSON (null for NaN, "inf" / "-inf" for infinities)."""
    from diffbench.sweep.store import write_json

    for p in paths:
        if p.suffix == ".json":
            write_json(p, json.loads(p.read_text()))


def _reference_and_space(model: str, ref: Any, extractor: str | None) -> tuple[Any, str | None]:
    """--ref as given, else the statistics a registry model names (its fid_ref); a registry name resolved to
    its verified file; and, without --extractor, the feature space those statistics were computed in when it
    is not Inception (the built-in digits models are scored as fd in the `digits` space)."""
    try:
        from diffbench.models.registry import reference_for_model, resolve_reference
    except ImportError:  # a registry without reference names
        return ref, extractor
    if ref is None:
        ref = reference_for_model(model)
    if ref is not None and not Path(str(ref)).exists():
        ref = str(resolve_reference(str(ref)))
    if ref is not None and extractor is None:
        from diffbench.metrics.extractors import EXTRACTORS, INCEPTION_ID
        from diffbench.metrics.stats import is_statistics_file, load_statistics

        if is_statistics_file(ref):
            ex = load_statistics(ref).extractor_id
            if ex is not None and not ex.startswith(INCEPTION_ID):
                from diffbench.metrics.extractors import load_extractor

                # registry names differ from the ids the extractors stamp (digits -> digits-cnn@<sha>)
                for name in (n for n in EXTRACTORS if n != INCEPTION_ID):
                    if name == ex or load_extractor(name).id == ex:
                        return ref, name
    return ref, extractor


def _image_saver(root: Path) -> Any:
    """Write each cell's uint8 images as PNGs under ROOT/<solver>-<schedule>-nfe<N>-<hash>/."""
    import hashlib

    from PIL import Image

    def save(spec: Any, images: Any, seeds: list[int], labels: Any) -> None:
        key = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8]
        folder = root / f"{spec.solver}-{spec.schedule}-nfe{spec.nfe or spec.steps}-{key}"
        folder.mkdir(parents=True, exist_ok=True)
        arr = images.permute(0, 2, 3, 1).numpy()
        for s, img in zip(seeds, arr):
            Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(folder / f"{s:06d}.png")

    return save


@app.command("report")
def report_cmd(
    store: Annotated[Path, typer.Argument(help="A results store (or its JSON export).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write md, csv, json, tex tables, plots and a JSON export here.")
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            help="Comma list of metrics to show (default all); fd-inf / fid-inf: the jackknife estimate at "
            "infinite n (always in the --out exports).",
        ),
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="Print this format (md, csv, json, tex) instead of rich tables.")
    ] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="With --out: also the PNG/SVG plots.")] = True,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an --out folder that holds another store's outputs (only those)."),
    ] = False,
    x: Annotated[str | None, typer.Option("--x", help=X_HELP)] = None,
    series: Annotated[str | None, typer.Option("--series", help=SERIES_HELP)] = None,
    floor: Annotated[
        bool,
        typer.Option(
            "--floor/--no-floor",
            help="Also the floor: fd of held-out real digits at the table's n against the same reference "
            "(built-in digits models), under the tables and as a line in the plots.",
        ),
    ] = False,
    errors: Annotated[
        bool,
        typer.Option(
            "--errors",
            help="Instead: the error decomposed per cell (FD, FD of the reference ODE solution, their gap = the "
            "discretisation's share, ref-error, prior-kl); needs cells swept with --metric fd,ref-fd.",
        ),
    ] = False,
    score_data: Annotated[
        str | None,
        typer.Option(
            "--score-data",
            help="With --errors: also each model's training error, the held-out loss of `diffbench score-error` "
            "on these images (a folder, .zip, .npz, or digits:heldout).",
        ),
    ] = None,
) -> None:
    """Tables, plots and paired differences regenerated from a store alone, over any swept axis.

    Examples: diffbench report diffbench-sweep.db --out results/;
    diffbench report sweep.db --x churn --series solver,nfe;
    diffbench report diffbench-sweep.db --floor;
    diffbench report sweep.db --errors --score-data digits:heldout
    """
    from diffbench.errors import ConfigError, UnknownNameError
    from diffbench.sweep.report import (
        FORMATS,
        RENDER,
        add_floor,
        inf_metrics,
        layout,
        metrics_in,
        table,
        write_reports,
    )
    from diffbench.sweep.store import load_cells

    if score_data is not None and not errors:
        raise ConfigError("--score-data goes with --errors (the training error beside the decomposition)")
    if errors and (metric or x or series or floor):
        raise ConfigError("--errors prints its own table per cell: --metric, --x, --series and --floor do not apply")
    cells = load_cells(store, what="results store")
    if not any(c["status"] == "done" for c in cells):
        raise ConfigError(f"{store} holds no finished cells")
    if errors:
        _errors_report(cells, out=out, fmt=fmt, score_data=score_data)
        return
    have = metrics_in(cells)
    metrics = _split(metric) or have  # fd-inf (the estimate at infinite n) only when asked for
    for m in metrics:
        if m not in have and m not in inf_metrics(cells):
            raise UnknownNameError(f"metric in {store}", m, [*have, *inf_metrics(cells)])
    if fmt is not None and fmt not in FORMATS:
        raise UnknownNameError("report format", fmt, FORMATS)
    lay = _layout_options(x, series)
    layout(cells, **lay)  # a bad --x/--series is one error line before anything is written
    if out is not None:
        from diffbench.errors import DiffbenchError
        from diffbench.sweep.store import check_out_folder, claim_out_folder, write_json

        # the folder holds one store's outputs, as a sweep's --out: another store's only with --overwrite
        check_out_folder(out, store, overwrite=overwrite)
        data = {"format": "diffbench-sweep", "cells": cells}
        if store.suffix != ".json":
            from diffbench.sweep.store import open_store

            with open_store(store, write=False) as s:
                data = s.export()
        try:
            claim_out_folder(out, store)  # removes the files another store wrote there (--overwrite)
            written = write_reports(cells, out, plot=plot, floor=floor, **lay)
            _standard_json(written)
            write_json(out / "results.json", data)
            claim_out_folder(out, store, [p.name for p in written if p.parent == out] + ["results.json"])
        except OSError as exc:
            raise DiffbenchError(f"writing the outputs to {out} failed ({exc})") from None
        err = _console(stderr=True)
        for line in written.skipped:
            err.print(f"skipped {line}", soft_wrap=True, markup=False)
        err.print(f"wrote {len(written) + 1} files to {out}")
    if fmt is not None:
        for m in metrics:
            t = table(cells, m, **lay)
            typer.echo(RENDER[fmt](add_floor(t, cells) if floor else t), nl=False)
    else:
        _print_tables(cells, metrics, floor=floor, x=x, series=series)
        from diffbench.recipes import stored_lines

        for line in stored_lines(cells):  # a recipe's published values beside the measured ones
            typer.echo(line)


def _errors_report(cells: list[dict[str, Any]], *, out: Path | None, fmt: str | None, score_data: str | None) -> None:
    """`report --errors`: the decomposition table (rich, or --format md/csv/json; --out writes all three), and
    with --score-data each model's held-out loss."""
    from diffbench.errors import UnknownNameError
    from diffbench.sweep.errors import RENDER, caption, cells_text, error_rows, fd_metric, models_of, training_error

    if fmt is not None and fmt not in RENDER:
        raise UnknownNameError("--errors format", fmt, list(RENDER))
    rows, left_out = error_rows(cells)
    metric = fd_metric([c for c in cells if c["status"] == "done"]) or "fd"
    losses: list[str] = []
    if score_data is not None:
        from diffbench.cli.tune import _images
        from diffbench.device import check_device

        dev = check_device("auto")
        for name, sha in models_of(cells).items():
            images, label = _images(score_data, 256)
            res = training_error(name, sha, images, source=label, device=dev)
            losses.append(
                f"training error of {name}: EDM-weighted held-out loss {res.total:.4f} on {label} "
                f"({res.n} images x {res.repeats} draws; per sigma: diffbench score-error {name} --data {score_data})"
            )
    notes = [f"{left_out} finished cell(s) without ref-fd or {metric} left out"] if left_out else []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for ext, render in RENDER.items():
            text = render(rows, metric)
            if ext == "md" and losses:
                text += "\n" + "\n".join(f"- {line}" for line in losses) + "\n"
            (out / f"errors.{ext}").write_text(text)
        _console(stderr=True).print(f"wrote errors.md, errors.csv, errors.json to {out}", markup=False)
    if fmt is not None:
        typer.echo(RENDER[fmt](rows, metric), nl=False)
    else:
        from rich.table import Table as RichTable

        from diffbench.sweep.errors import HEADERS

        rt = RichTable(title=caption(metric), title_justify="left")
        for h in HEADERS:
            rt.add_column(h, justify="left" if h in ("model", "config") else "right")
        for r in rows:
            rt.add_row(*cells_text(r))
        _console().print(rt)
    for line in notes + losses:
        typer.echo(line)


@app.command("compare")
def compare_cmd(
    new: Annotated[Path, typer.Argument(help="The new results: a store or its JSON export.")],
    baseline: Annotated[Path, typer.Argument(help="The baseline: a store or its JSON export.")],
    tolerance: Annotated[
        str, typer.Option("--tolerance", help="Allowed worsening: relative ('2%') or absolute ('0.05').")
    ] = "0%",
    metric: Annotated[
        str | None, typer.Option("--metric", help="Comma list of metrics to compare (default all).")
    ] = None,
) -> None:
    """Compare cell by cell; exit 1 when a cell is worse beyond the tolerance and the 95% interval of the
    difference (the paired jackknife over shared seed blocks; unpaired, and said so, when the baseline ran other
    seeds or blocks), exit 2 for bad input (a missing or damaged file, a baseline cell missing from NEW,
    stores of different models). Verdicts: ok, within tolerance, within the interval, REGRESSION (exit 1).
    NEW cells without a baseline (an extended sweep) are listed and pass; a NEW cell that measured more
    metrics than its baseline cell is compared on the baseline's metrics.

    Two guidance settings: a baseline cell whose identity NEW lacks is paired with the NEW cell that differs
    from it only in guidance (--guidance, --guide, --guidance-interval, --classifier-guidance, --classifier) on
    the same seeds, blocks, class, metrics and counted NFE; the output names both settings and, with inv-prob,
    the share of seeds whose p(c|x) rose and fell.

    Example: diffbench compare new.json baseline.json --tolerance 2%

    Example: diffbench compare guided-w3.db unguided.db --metric inv-prob,fd
    """
    from rich.table import Table as RichTable

    from diffbench.sweep.compare import compare_paths

    res = compare_paths(new, baseline, tolerance=tolerance, metrics=_split(metric))
    how = "unpaired where the runs differ" if res.unpaired else "paired jackknife over the shared seed blocks"
    rt = RichTable(title=f"NEW − BASELINE (tolerance {res.tolerance}; 95% interval of Δ: {how})")
    for col in ("config", "NFE", "metric", "new", "baseline", "Δ", "interval", "verdict"):
        rt.add_column(col, justify="left" if col in ("config", "metric", "verdict") else "right")

    def f(v: float | None) -> str:
        return "—" if v is None else f"{v:.4g}"

    for r in res.rows:
        verdict = r.verdict
        if r.note:
            verdict += f" ({r.note})"
        ci = "" if r.ci_low is None else f"[{r.ci_low:.3g}, {r.ci_high:.3g}]"
        rt.add_row(r.config, str(r.nfe), r.metric, f(r.new), f(r.baseline), f(r.difference), ci, verdict)
    con = _console()
    con.print(rt)
    if res.unpaired:
        con.print(
            f"compared unpaired (the two jackknife SEs combined): NEW and the baseline differ in {res.unpaired}; "
            "rerun with the baseline's seeds and blocks for the paired test",
            markup=False,
            soft_wrap=True,
        )
    if res.more_metrics:
        con.print(f"{res.more_metrics}: compared on the baseline's metrics, paired", markup=False, soft_wrap=True)
    if res.across_guidance:
        con.print("matched across guidance (same seeds, blocks, class and counted NFE; paired):", markup=False)
        for line in res.across_guidance:
            con.print(f"  {line}", markup=False, soft_wrap=True)
    for line in res.seed_shifts:
        con.print(line, markup=False, soft_wrap=True)
    if res.unmatched_new:
        con.print(f"{len(res.unmatched_new)} cell(s) of NEW have no baseline (not compared, they pass):", markup=False)
        for label in res.unmatched_new:
            con.print(f"  {label}", markup=False, soft_wrap=True)
    n = len(res.regressions)
    con.print(
        f"{n} regression(s) in {len(res.rows)} comparisons" if n else f"no regression in {len(res.rows)} comparisons"
    )
    raise typer.Exit(res.exit_code)
