"""Run a grid cell by cell into a store: finished cells are skipped, an interrupted one resumes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from diffbench.distributed import SINGLE, World
from diffbench.sweep.bench import Bench
from diffbench.sweep.cell import BatchProgress, CellResult, run_cell
from diffbench.sweep.grid import Cell, Grid, check_grid
from diffbench.sweep.identity import cell_identity, skipped_identity
from diffbench.sweep.shard import Shard, assign
from diffbench.sweep.store import Store


@dataclass(frozen=True)
class Event:
    """Progress of a sweep, for a display: kind is start | batch | done | cached | skipped | elsewhere (a cell
    of another shard)."""

    kind: str
    index: int  # position of the cell in the grid
    total: int  # cells in the grid
    cell: Cell
    batch: BatchProgress | None = None
    result: CellResult | None = None
    resumed_from: int = 0


def cell_info(cell: Cell, bench: Bench) -> dict[str, Any]:
    """The columns of a store row that describe a cell."""
    spec, plan = cell.spec, cell.plan
    return {
        "config": cell.config,
        "solver": None if spec is None else spec.solver,
        "schedule": None if spec is None else spec.schedule,
        "nfe_requested": cell.nfe,
        "nfe": None if plan is None else plan.nfe,
        "endpoint": None if spec is None else spec.endpoint,
        "denoise_to_zero": None if spec is None else spec.denoise_to_zero,
        "steps": None if plan is None else plan.steps,
        "n_total": len(bench.seeds),
    }


def _identity(cell: Cell, bench: Bench) -> tuple[str, dict[str, Any]]:
    if cell.skipped is not None or cell.spec is None or cell.plan is None:
        return skipped_identity(cell, bench)
    return cell_identity(bench, cell.spec, cell.plan)


def _mine(grid: Grid, ids: list[str], shard: Shard | None) -> list[bool]:
    """Which of the grid's cells belong to `shard` (diffbench.sweep.shard.assign; cost: the NFE spent)."""
    if shard is None:
        return [True] * len(ids)
    costs = [float(c.plan.nfe) if c.plan is not None and c.skipped is None else 0.0 for c in grid.cells]
    to = assign(list(zip(ids, costs)), shard.count)
    return [to[cid] == shard.index for cid in ids]


def shard_grid(grid: Grid, bench: Bench, shard: Shard | None) -> Grid:
    """The grid with only the cells of `shard` (all of them for None), in grid order."""
    mine = _mine(grid, [_identity(c, bench)[0] for c in grid.cells], shard)
    return replace(grid, cells=tuple(c for c, m in zip(grid.cells, mine) if m))


def run_sweep(
    bench: Bench,
    grid: Grid,
    store: Store | None,
    *,
    on_event: Callable[[Event], None] | None = None,
    checkpoint_every: int | None = None,
    shard: Shard | None = None,
    world: World | None = None,
) -> list[dict[str, Any]]:
    """Run every runnable cell not yet finished in the store; returns the store rows of the grid's cells.

    shard: run (and record) only the cells of this shard (diffbench.sweep.shard); each keeps its position in
    the whole grid, so the stores of all shards merged hold what one store of the whole grid would.
    world: the ranks of a torchrun launch: every rank runs every cell's share of batches (run_cell); rank 0
    alone holds the store (the others pass None), decides what is cached or resumed, writes and emits events;
    the others return []."""
    world = world or SINGLE
    check_grid(grid)
    total = len(grid.cells)
    emit = on_event if on_event is not None and world.main else (lambda e: None)
    ids: list[str] = []
    idents = [_identity(c, bench) for c in grid.cells]
    mine = _mine(grid, [cid for cid, _ in idents], shard)
    for i, cell in enumerate(grid.cells):
        if not mine[i]:
            emit(Event("elsewhere", i, total, cell))
    for i, cell in enumerate(grid.cells):
        if not mine[i]:
            continue
        if cell.skipped is not None or cell.spec is None or cell.plan is None:
            cid, ident = idents[i]
            if store is not None:
                store.skip(cid, position=i, info=cell_info(cell, bench), identity=ident, reason=cell.skipped or "")
            ids.append(cid)
            emit(Event("skipped", i, total, cell))
            continue
        cid, ident = idents[i]
        ids.append(cid)
        row = state = None
        if world.main:
            assert store is not None
            row = store.get(cid)
        cached = world.broadcast(row is not None and row["status"] == "done", what="reading the store")
        if cached:
            emit(Event("cached", i, total, cell))
            continue
        if world.main:
            assert store is not None
            store.begin(cid, position=i, info=cell_info(cell, bench), identity=ident)
            state = store.state(cid)
        resumed = 0 if row is None else int(row.get("n_done") or 0)
        emit(Event("start", i, total, cell, resumed_from=resumed if state is not None else 0))

        def on_batch(p: BatchProgress, i: int = i, cell: Cell = cell) -> None:
            emit(Event("batch", i, total, cell, batch=p))

        result = run_cell(
            bench,
            cell.spec,
            state=state,
            checkpoint=None if store is None else partial(store.checkpoint, cid),
            checkpoint_every=checkpoint_every,
            on_batch=on_batch,
            world=world,
        )
        if store is None:
            continue
        prov = dict(result.provenance)
        prov["wall_s"], prov["images_per_s"] = result.wall_s, result.images_per_s
        prov["nfe_requested"], prov["nfe_spent"] = cell.nfe, result.nfe
        if shard is not None:
            prov["shard"] = str(shard)
        store.finish(
            cid,
            nfe=result.nfe,
            results=result.metrics,
            provenance=prov,
            wall_s=result.wall_s,
            images_per_s=result.images_per_s,
            n_done=len(bench.seeds),
        )
        emit(Event("done", i, total, cell, result=result))
    if store is None:
        return []
    rows = [store.get(c) for c in ids]
    return [r for r in rows if r is not None]
