"""`diffbench merge`: a thin command over diffbench.sweep.merge (the stores of a sweep's shards into one)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffbench.cli.app import app


@app.command("merge")
def merge_cmd(
    stores: Annotated[list[Path], typer.Argument(help="Results stores to merge (e.g. the stores of every --shard).")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="The merged store: created, or an existing store added to.")
    ],
) -> None:
    """Combine results stores into one: finished and skipped cells, each once. Refused with one line and
    nothing written: stores of another schema, one cell with different results in two stores, stores of
    different models.

    Example: diffbench merge shard-0.db shard-1.db shard-2.db -o all.db && diffbench report all.db --out all/
    """
    from rich.console import Console

    from diffbench.sweep.merge import merge_stores

    res = merge_stores(list(stores), output)
    err = Console(stderr=True, highlight=False)
    for path, n in res.unfinished.items():
        err.print(
            f"{path}: {n} unfinished cell(s) left out (rerun its sweep to finish them, then merge again)",
            soft_wrap=True,
            markup=False,
        )
    kept = f", {res.present} already there" if res.present else ""
    err.print(
        f"merged {res.stores} store(s) into {res.output}: {res.added} cell(s) added{kept}", soft_wrap=True, markup=False
    )
