"""`diffbench merge`: combine results stores (the shards of one grid, or sweeps run on other machines) into one.

SQLite must not be shared over a network file system, so each machine writes its own store and the stores
are merged afterwards. Finished and skipped cells are copied with their rows as they are (position, results,
provenance, times); a cell id present in several stores is copied once, and only when every copy holds the
same results. Refused, with one line and nothing written: a store of another schema (or not a store), two
copies of one cell with different results, and stores of different models (their cells would share table
rows: merge each model's stores on their own). Unfinished cells are not copied (a rerun of their shard
finishes them; merging again adds them). The output may be an existing store: its cells take part in the
checks and new cells are added to it, so merging again after a shard reran is safe.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffbench.errors import ConfigError, DiffbenchError
from diffbench.sweep.store import COLUMNS, Store, StoreError, check_store_path


class MergeError(DiffbenchError):
    """Stores that cannot be merged: cells with different results under one id, or different models."""


@dataclass
class MergeResult:
    """What a merge did: cells added, cells already present (identical), unfinished cells left out per store."""

    output: Path
    added: int = 0
    present: int = 0
    unfinished: dict[str, int] = field(default_factory=dict)
    stores: int = 0


def _model_of(row: dict[str, Any]) -> str | None:
    ident = row.get("identity") or {}
    files = ident.get("files_read") or {}
    return files.get("model") if isinstance(files, dict) else None


def _model_name(row: dict[str, Any]) -> str:
    name = (row.get("provenance") or {}).get("model_name")
    sha = _model_of(row) or "?"
    return f"{name} (sha256 {sha[:12]})" if name else f"sha256 {sha[:12]}"


def _label(row: dict[str, Any]) -> str:
    return f"'{row['config']}' at NFE {row.get('nfe_requested')} (id {str(row['id'])[:12]})"


def _differs(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Why two copies of one cell differ in what they measured (None: the same results)."""
    if a["status"] != b["status"]:
        return f"{a['status']} in one, {b['status']} in the other"
    ra, rb = a.get("results") or {}, b.get("results") or {}
    if json.dumps(ra, sort_keys=True) == json.dumps(rb, sort_keys=True):
        return None
    for m in sorted(set(ra) | set(rb)):
        va, vb = (ra.get(m) or {}).get("value"), (rb.get(m) or {}).get("value")
        if va != vb:
            return f"{m} {va} vs {vb}"
    return "their results differ"


def _read(path: Path, *, what: str = "") -> tuple[list[dict[str, Any]], list[str]]:
    """(finished and skipped rows, ids of unfinished cells) of one store; another schema is one line."""
    from diffbench.sweep.store import SCHEMA_VERSION, _check_file, _schema_of

    if path.is_file():
        _check_file(path)
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                version = _schema_of(con, path)
            finally:
                con.close()
        except sqlite3.DatabaseError:
            version = SCHEMA_VERSION  # Store gives the damaged-file line
        if version is not None and version != SCHEMA_VERSION:
            raise StoreError(
                f"{what}{path} was written with results-store schema {version}; this diffbench merges schema "
                f"{SCHEMA_VERSION} stores (merge it with the diffbench that wrote it); nothing written"
            )
    with Store(path, write=False) as st:
        rows = st.cells()
    keep = [r for r in rows if r["status"] in ("done", "skipped")]
    return keep, [r["id"] for r in rows if r["status"] not in ("done", "skipped")]


def merge_stores(inputs: list[str | os.PathLike], output: str | os.PathLike) -> MergeResult:
    """Merge the finished and skipped cells of `inputs` into `output` (created, or an existing store added to).

    Everything is read and checked before the output is opened; the rows are then written in one transaction.
    Raises StoreError (a missing file, not a store, another schema, the output given as an input) or
    MergeError (one cell id with different results in two stores, stores of different models).
    """
    if not inputs:
        raise ConfigError("give at least one store to merge")
    out = Path(output)
    paths = [Path(p) for p in inputs]
    for p in paths:
        if p.exists() and out.exists() and p.resolve() == out.resolve():
            raise ConfigError(f"-o {out} is also one of the stores to merge; name another output")
    named = [p.resolve() for p in paths]
    twice = sorted({str(p) for p, q in zip(paths, named) if named.count(q) > 1})
    if twice:
        raise ConfigError(f"{twice[0]} is named twice among the stores to merge; name each store once")
    if not out.parent.is_dir():
        raise ConfigError(f"-o {out}: the folder {out.parent} does not exist")
    result = MergeResult(output=out, stores=len(paths))
    chosen: dict[str, tuple[dict[str, Any], Path]] = {}
    models: dict[str, tuple[str, Path]] = {}
    sources: list[tuple[Path, list[dict[str, Any]]]] = []
    if out.exists() and out.is_file() and out.stat().st_size:
        rows, _ = _read(out, what="-o ")
        sources.append((out, rows))
    check_store_path(out)  # an existing output must be a store of this schema; a new one creatable
    seen: set[Path] = set()
    for p in paths:
        if p.resolve() in seen:
            continue
        seen.add(p.resolve())
        if not p.exists():
            raise StoreError(f"{p}: no such results store")
        rows, unfinished = _read(p)
        if unfinished:
            result.unfinished[str(p)] = len(unfinished)
        sources.append((p, rows))
    seed_sets: dict[str, Path] = {}
    for p, rows in sources:
        for r in rows:
            seeds = (r.get("identity") or {}).get("seeds")
            if seeds is not None:
                seed_sets.setdefault(str(seeds), p)
                if len(seed_sets) > 1:  # one table holds cells of one seed set: shards of one grid share it
                    (s1, p1), (s2, p2) = list(seed_sets.items())[:2]
                    raise MergeError(
                        f"{p1} holds cells on seeds {s1}, {p2} on seeds {s2}: merge combines shards of one grid "
                        "(the same seeds); a table of both would show one cell per sampler (nothing written)"
                    )
            model = _model_of(r)
            if model is not None:
                models.setdefault(model, (_model_name(r), p))
                if len(models) > 1:
                    (n1, p1), (n2, p2) = list(models.values())[:2]
                    raise MergeError(
                        f"{p1} holds cells of model {n1}, {p2} of model {n2}: a merged store would mix two "
                        "models in one table; merge each model's stores on their own (nothing written)"
                    )
            prev = chosen.get(r["id"])
            if prev is None:
                chosen[r["id"]] = (r, p)
                continue
            why = _differs(prev[0], r)
            if why is not None:
                raise MergeError(
                    f"cell {_label(r)} has different results in {prev[1]} and {p} ({why}): the same cell "
                    "gave other numbers (another device, library or diffbench version?); nothing written"
                )
    # finished cells the output already holds stay as they are; an unfinished copy there is replaced
    present = {r["id"] for r in (sources[0][1] if sources and sources[0][0] == out else [])}
    new = [r for cid, (r, _) in chosen.items() if cid not in present]
    result.present = len(chosen) - len(new)
    with Store(out) as st:
        cols = list(COLUMNS)
        rows_sql = []
        for r in new:
            vals = []
            for c in cols:
                v = r.get(c)
                if c in ("identity", "results", "provenance") and v is not None:
                    v = json.dumps(v, sort_keys=c == "identity", default=str)
                elif c == "denoise_to_zero" and v is not None:
                    v = int(v)
                vals.append(v)
            rows_sql.append(tuple(vals))
        try:
            with st.con:
                st.con.executemany(
                    f"INSERT OR REPLACE INTO cells ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows_sql
                )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{out}: writing the merged cells failed ({exc}); nothing was added") from None
    result.added = len(new)
    return result


__all__ = ["MergeError", "MergeResult", "merge_stores"]
