"""`diffbench checkpoints list | info | fetch | verify | forget`: the checkpoint registry and the verified cache."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated

import typer

from diffbench.cli.app import app

checkpoints_app = typer.Typer(
    name="checkpoints",
    help="List, inspect, download and verify registered checkpoints (cache: $DIFFBENCH_HOME, "
    "default ~/.cache/diffbench).",
    no_args_is_help=True,
)
app.add_typer(checkpoints_app, name="checkpoints")


@contextlib.contextmanager
def download_progress(label: str = "download", *, console=None) -> Iterator:
    """A rich progress bar as a `progress(done, total)` callback for diffbench.models.fetch.

    The bar appears with the first reported byte, so a cached file or a refused request shows nothing.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    state: dict = {}

    def update(done: int, total: int | None) -> None:
        if "bar" not in state:
            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console or Console(stderr=True),
            )
            bar.start()
            state["bar"], state["task"] = bar, bar.add_task(label, total=total)
        state["bar"].update(state["task"], completed=done, total=total)

    try:
        yield update
    finally:
        if "bar" in state:
            state["bar"].stop()


def _fmt_size(entry) -> str:
    if entry.size:
        return f"{sum(entry.size.values()) / 1e6:.1f} MB"
    if entry.approx_size_mb:
        return f"~{entry.approx_size_mb:g} MB"
    return "?"


def _cached(entry) -> str:
    from diffbench.models.fetch import read_lock

    if str(getattr(entry, "url", "")).startswith("builtin:"):
        return "built-in"  # shipped inside the package; sha256-checked at every load

    files = entry.file_names()
    d = entry.local_path()
    paths = [d / f for f in files] if entry.files else [d]
    if all(p.exists() for p in paths):
        locked = read_lock(strict=False)  # a malformed record shows as unpinned here; fetch names it
        pinned = all(
            entry.sha256.get(f)
            or isinstance(locked.get(entry.file_url(f)), dict)
            and locked[entry.file_url(f)].get("sha256")
            for f in files
        )
        return "yes" if pinned else "yes (unpinned)"
    if any(p.with_name(p.name + ".part").exists() for p in paths):
        return "partial"
    return "no"


@checkpoints_app.command("list")
def list_cmd(
    kind: Annotated[str | None, typer.Option(help="Only this kind: model or fid-stats.")] = None,
) -> None:
    """List the registry.

    Example: diffbench checkpoints list --kind model
    """
    from rich.console import Console
    from rich.table import Table

    from diffbench.errors import UnknownNameError
    from diffbench.models.registry import KINDS, entries

    if kind is not None and kind not in KINDS:
        raise UnknownNameError("checkpoint kind", kind, KINDS)
    table = Table(title="diffbench checkpoints")
    for col in ("name", "kind", "format", "precond", "res", "ch", "labels", "FID ref", "size", "cached"):
        table.add_column(col)
    for e in entries().values():
        if kind is not None and e.kind != kind:
            continue
        table.add_row(
            e.name,
            e.kind,
            e.format,
            e.precond or "",
            str(e.resolution or ""),
            str(e.channels or ""),
            "" if e.label_dim is None else str(e.label_dim),
            e.fid_ref or "",
            _fmt_size(e),
            _cached(e),
        )
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)  # pipes: no wrapped names


@checkpoints_app.command("info")
def info_cmd(name: Annotated[str, typer.Argument(help="Registry name.")]) -> None:
    """Everything the registry knows about one checkpoint, and the state of its cached copy.

    Example: diffbench checkpoints info edm-cifar10-32x32-cond-vp
    """
    from diffbench.models.fetch import expected_for
    from diffbench.models.registry import get_entry

    e = get_entry(name)
    rows = [
        ("name", e.name),
        ("kind", e.kind),
        ("description", e.description),
        ("format", e.format),
        ("url", e.url),
    ]
    rows = [(k, v) for k, v in rows if v]
    if e.files:
        rows.append(("files", ", ".join(e.files)))
    rows += [
        (k, str(v))
        for k, v in (
            ("precond", e.precond),
            ("network", e.network),
            ("architecture", e.architecture),
            ("resolution", e.resolution),
            ("channels", e.channels),
            ("label_dim", e.label_dim),
            ("fid_ref", e.fid_ref),
        )
        if v is not None
    ]
    for key, sampler in (("sampler", e.sampler), ("sampler_stochastic", e.sampler_stochastic)):
        if sampler:
            rows.append((key, ", ".join(f"{k}={v}" for k, v in sampler.items())))
    rows.append(("size", _fmt_size(e)))
    for f in e.file_names():
        sha, _, locked = expected_for(e.file_url(f), sha256=e.sha256.get(f), size=e.size.get(f))
        src = "lock file" if locked else "published"
        rows.append((f"sha256 {f}", f"{sha} ({src})" if sha else "unknown (recorded by the first download)"))
    rows.append(("cache path", str(e.local_path())))
    rows.append(("cached", _cached(e)))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        typer.echo(f"{k:<{width}}  {v}")


@checkpoints_app.command("fetch")
def fetch_cmd(
    names: Annotated[list[str], typer.Argument(help="Registry names (or http(s) URLs) to download.")],
    offline: Annotated[bool, typer.Option(help="Never touch the network; only verify cached copies.")] = False,
    retries: Annotated[int, typer.Option(help="Resume attempts after a cut connection.", min=0)] = 2,
) -> None:
    """Download into the cache, resuming partial files, and verify sha256.

    Example: diffbench checkpoints fetch edm-cifar10-32x32-cond-vp fid-cifar10-32x32
    """
    from diffbench.models import fetch
    from diffbench.models.registry import fetch_entry, get_entry
    from diffbench.models.validate import check_for_file

    for name in names:
        if name.startswith(("http://", "https://")):
            dest = fetch.url_dest(name)
            with download_progress(fetch.url_basename(name)) as progress:
                res = fetch.download(
                    name,
                    dest,
                    offline=offline,
                    retries=retries,
                    progress=progress,
                    check=check_for_file(dest.name),
                    hint="; or pass the file's local path instead of the URL",
                )
            path, digest, recorded = res.path, res.sha256, (res.path.name,) if res.recorded else ()
        else:
            entry = get_entry(name)
            with download_progress(name) as progress:
                got = fetch_entry(entry, offline=offline, retries=retries, progress=progress)
            path, digest, recorded = got.path, got.sha256, got.recorded
        typer.echo(f"{name}: {path} sha256 {digest}")
        for f in recorded:
            typer.echo(
                f"{name}: no published sha256 for {f}; recorded this download's hash in "
                f"{fetch.cache_dir() / fetch.LOCK_NAME}, later downloads must match it"
            )


@checkpoints_app.command("verify")
def verify_cmd(
    names: Annotated[list[str] | None, typer.Argument(help="Registry names; default: every entry.")] = None,
) -> None:
    """Re-hash cached files; a mismatching file is moved to quarantine and the command fails.

    Example: diffbench checkpoints verify
    """
    from diffbench.errors import ModelLoadError
    from diffbench.models.fetch import cache_dir
    from diffbench.models.registry import entries, get_entry, verify_entry

    targets = [get_entry(n) for n in names] if names else list(entries().values())
    bad = shown = 0
    for entry in targets:
        for st in verify_entry(entry):
            if st.status == "missing" and not names:
                continue  # an uncached entry is not a problem when verifying everything
            # a corrupt file always fails; a missing or partial one only when it was asked for by name
            bad += st.status == "mismatch" or (bool(names) and st.status in ("partial", "missing"))
            shown += not str(entry.url).startswith("builtin:")  # shipped files are checked, never "cached"
            typer.echo(f"{st.status:<9} {st.entry}/{st.file}  {st.detail}".rstrip())
    if bad:
        raise ModelLoadError(f"{bad} file(s) failed verification")
    if not shown and not names:
        typer.echo(
            f"no downloaded file to verify: no registry file is cached in {cache_dir() / 'checkpoints'} "
            "(download with `diffbench checkpoints fetch NAME`)"
        )


@checkpoints_app.command("forget")
def forget_cmd(
    name: Annotated[str, typer.Argument(help="Registry name (or http(s) URL) whose pinned hash to forget.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (for scripts).")] = False,
) -> None:
    """Forget the sha256 pinned by a first download, and move the cached copy to quarantine.

    For a file that was pinned although it is damaged (a download cut short, a server's error page): the next
    fetch downloads it afresh and pins what it verifies. Example: diffbench checkpoints forget edm-cifar10-32x32-cond-vp
    """
    from diffbench.errors import DiffbenchError, ModelLoadError
    from diffbench.models.fetch import LOCK_NAME, cache_dir
    from diffbench.models.registry import forget, pinned_files

    items = [i for i in pinned_files(name) if i.record is not None or i.cached]
    if not items:
        raise ModelLoadError(
            f"nothing to forget for {name}: no pinned hash in {cache_dir() / LOCK_NAME} and no cached file"
        )
    for i in items:
        sha = i.record.get("sha256") if isinstance(i.record, dict) else None
        pinned = f"pinned sha256 {sha}" if isinstance(sha, str) else ("a malformed pin" if i.record else "no pin")
        typer.echo(f"{name}: {i.path.name}: {pinned}; cached copy: {i.path if i.cached else 'none'}")
    if not yes:
        try:
            ok = typer.confirm(f"Forget the pinned hash of {name} and quarantine its cached copy?", default=False)
        except typer.Abort:  # no answer (stdin closed or empty)
            ok = False
        if not ok:
            raise DiffbenchError(f"nothing forgotten for {name} (not confirmed; --yes skips the question)")
    for item, moved in forget(name):
        where = f"; cached copy moved to {moved}" if moved else ""
        typer.echo(f"{name}: forgot {item.path.name}{where}; the next fetch downloads and pins it afresh")
