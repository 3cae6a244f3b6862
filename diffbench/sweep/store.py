"""The results store: one SQLite file (WAL), a schema version, one row per cell with its full provenance.

A running cell's accumulators are checkpointed in the same transaction as its count of finished seeds, so a
killed sweep resumes from its last finished batch. A sweep holds an exclusive lock (flock on STORE.lock,
released by the OS when the process dies) so two sweeps never write one store. A file of another schema,
or not a store at all, is refused and never modified.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diffbench.errors import DiffbenchError

SCHEMA_VERSION = 1
EXPORT_FORMAT = "diffbench-sweep"
_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE cells (
    id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    config TEXT NOT NULL,
    solver TEXT,
    schedule TEXT,
    nfe_requested INTEGER,
    nfe INTEGER,
    endpoint TEXT,
    denoise_to_zero INTEGER,
    steps INTEGER,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'skipped')),
    skip_reason TEXT,
    n_done INTEGER NOT NULL DEFAULT 0,
    n_total INTEGER,
    state BLOB,
    identity TEXT NOT NULL,
    results TEXT,
    provenance TEXT,
    wall_s REAL,
    images_per_s REAL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
"""

COLUMNS = (
    "id",
    "position",
    "config",
    "solver",
    "schedule",
    "nfe_requested",
    "nfe",
    "endpoint",
    "denoise_to_zero",
    "steps",
    "status",
    "skip_reason",
    "n_done",
    "n_total",
    "identity",
    "results",
    "provenance",
    "wall_s",
    "images_per_s",
    "created",
    "updated",
)
_JSON = ("identity", "results", "provenance")


class StoreError(DiffbenchError):
    """A store that cannot be used: not a store, another schema, locked by a running sweep."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a results store")
    with open(path, "rb") as f:
        head = f.read(16)
    if head and head != _MAGIC:
        raise StoreError(f"{path} is not a diffbench results store (not an SQLite file); refusing to touch it")


def _schema_of(con: sqlite3.Connection, path: Path) -> int | None:
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return None
    if "meta" not in tables:
        raise StoreError(f"{path} is an SQLite file but not a diffbench results store; refusing to touch it")
    row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        raise StoreError(f"{path} has no schema version: not a diffbench results store")
    try:
        return int(row[0])
    except ValueError:
        raise StoreError(f"{path}: unreadable schema version {row[0]!r}") from None


class _Lock:
    """An exclusive, non-blocking flock on STORE.lock; the OS drops it when the holder dies (kill -9)."""

    def __init__(self, store: Path):
        self.path = store.with_name(store.name + ".lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): rely on SQLite's own locking
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip()
            os.close(fd)
            who = f" ({holder})" if holder else ""
            raise StoreError(
                f"store {self.path.with_suffix('')} is in use by another running sweep{who}; "
                "wait for it or use another --store"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


class Store:
    """A results store opened for a sweep (locked, writable) or for reading (report, compare)."""

    def __init__(self, path: str | os.PathLike, *, write: bool = True):
        self.path = Path(path)
        self.write = write
        self._lock: _Lock | None = None
        if not write:
            if not self.path.is_file():
                raise StoreError(f"{self.path}: no such results store")
            _check_file(self.path)
            self.con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            version = _schema_of(self.con, self.path)
            self._check_version(version)
            return
        if self.path.exists():
            _check_file(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _Lock(self.path)
        self._lock.acquire()
        try:
            self.con = sqlite3.connect(self.path, timeout=30)
            version = _schema_of(self.con, self.path)
            if version is None:
                self.con.execute("PRAGMA journal_mode=WAL")
                with self.con:
                    self.con.executescript(_SCHEMA)
                    self.con.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?)",
                        [("schema_version", str(SCHEMA_VERSION)), ("created", _now()), ("format", EXPORT_FORMAT)],
                    )
            else:
                self._check_version(version)
                self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            self._lock.release()
            raise StoreError(f"{self.path}: not a readable results store ({exc})") from None
        except BaseException:
            self._lock.release()
            raise

    def _check_version(self, version: int | None) -> None:
        if version is None:
            raise StoreError(f"{self.path} is an empty SQLite file, not a diffbench results store")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written with results-store schema {version}; this diffbench reads schema "
                f"{SCHEMA_VERSION}. It is left untouched: use another --store (or the diffbench that wrote it)"
            )

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.con.close()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- reading -------------------------------------------------------------------------------------

    def _row(self, r: tuple[Any, ...]) -> dict[str, Any]:
        d = dict(zip(COLUMNS, r))
        for k in _JSON:
            if d.get(k) is not None:
                d[k] = json.loads(d[k])
        d["denoise_to_zero"] = bool(d["denoise_to_zero"]) if d["denoise_to_zero"] is not None else None
        return d

    def get(self, cell_id: str) -> dict[str, Any] | None:
        """One cell's row (without its checkpoint), or None."""
        r = self.con.execute(f"SELECT {', '.join(COLUMNS)} FROM cells WHERE id=?", (cell_id,)).fetchone()
        return None if r is None else self._row(r)

    def state(self, cell_id: str) -> bytes | None:
        """The checkpoint of a running cell, or None."""
        r = self.con.execute("SELECT state FROM cells WHERE id=? AND status='running'", (cell_id,)).fetchone()
        return None if r is None or r[0] is None else bytes(r[0])

    def cells(self, *, status: str | None = None) -> list[dict[str, Any]]:
        """Rows in grid order (positions of the sweep that added them)."""
        q = f"SELECT {', '.join(COLUMNS)} FROM cells"
        args: tuple[Any, ...] = ()
        if status is not None:
            q += " WHERE status=?"
            args = (status,)
        return [self._row(r) for r in self.con.execute(q + " ORDER BY position, created, id", args)]

    # ---- writing -------------------------------------------------------------------------------------

    def _base(self, cell_id: str, *, position: int, info: dict[str, Any], identity: dict[str, Any]) -> dict[str, Any]:
        now = _now()
        return {
            "id": cell_id,
            "position": position,
            "config": info["config"],
            "solver": info.get("solver"),
            "schedule": info.get("schedule"),
            "nfe_requested": info.get("nfe_requested"),
            "nfe": info.get("nfe"),
            "endpoint": info.get("endpoint"),
            "denoise_to_zero": None if info.get("denoise_to_zero") is None else int(info["denoise_to_zero"]),
            "steps": info.get("steps"),
            "n_total": info.get("n_total"),
            "identity": json.dumps(identity, sort_keys=True, default=str),
            "created": now,
            "updated": now,
        }

    def begin(self, cell_id: str, *, position: int, info: dict[str, Any], identity: dict[str, Any]) -> None:
        """Register a cell as running (no-op when it is already in the store)."""
        row = self._base(cell_id, position=position, info=info, identity=identity)
        row.update(status="running", n_done=0)
        keys = ", ".join(row)
        with self.con:
            self.con.execute(
                f"INSERT OR IGNORE INTO cells ({keys}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
            )

    def skip(self, cell_id: str, *, position: int, info: dict[str, Any], identity: dict[str, Any], reason: str) -> None:
        """Record a skipped cell (a budget its solver cannot hit, an option that does not apply)."""
        row = self._base(cell_id, position=position, info=info, identity=identity)
        row.update(status="skipped", skip_reason=reason, n_done=0)
        keys = ", ".join(row)
        with self.con:
            self.con.execute(
                f"INSERT OR IGNORE INTO cells ({keys}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
            )

    def checkpoint(self, cell_id: str, n_done: int, state: bytes) -> None:
        """Accumulators and the count of finished seeds, in one transaction."""
        with self.con:
            self.con.execute(
                "UPDATE cells SET n_done=?, state=?, updated=? WHERE id=? AND status='running'",
                (n_done, sqlite3.Binary(state), _now(), cell_id),
            )

    def finish(
        self,
        cell_id: str,
        *,
        nfe: int,
        results: dict[str, Any],
        provenance: dict[str, Any],
        wall_s: float,
        images_per_s: float,
        n_done: int,
    ) -> None:
        """Mark a cell done with its results and provenance; its checkpoint is dropped."""
        with self.con:
            self.con.execute(
                "UPDATE cells SET status='done', nfe=?, results=?, provenance=?, wall_s=?, images_per_s=?, "
                "n_done=?, state=NULL, updated=? WHERE id=?",
                (
                    nfe,
                    json.dumps(results, default=str),
                    json.dumps(provenance, default=str),
                    wall_s,
                    images_per_s,
                    n_done,
                    _now(),
                    cell_id,
                ),
            )

    # ---- export --------------------------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """The store as one JSON-ready dict: what `compare` reads and baselines are kept in."""
        meta = dict(self.con.execute("SELECT key, value FROM meta").fetchall())
        return {
            "format": EXPORT_FORMAT,
            "schema": SCHEMA_VERSION,
            "created": meta.get("created"),
            "exported": _now(),
            "cells": [c for c in self.cells() if c["status"] in ("done", "skipped")],
        }

    def export_json(self, path: str | os.PathLike) -> Path:
        """Write `export()` to a file (atomically)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.export(), indent=1, default=str) + "\n")
        os.replace(tmp, p)
        return p


@contextlib.contextmanager
def open_store(path: str | os.PathLike, *, write: bool = True) -> Iterator[Store]:
    """Open a store (locked for writing, or read-only) and close it after."""
    s = Store(path, write=write)
    try:
        yield s
    finally:
        s.close()


def load_cells(path: str | os.PathLike, *, what: str = "results") -> list[dict[str, Any]]:
    """Finished and skipped cells from a store or from its JSON export."""
    p = Path(path)
    if not p.exists():
        raise StoreError(f"{p}: no such {what} (a results store or its JSON export)")
    if p.is_file():
        with open(p, "rb") as f:
            head = f.read(16)
        if head != _MAGIC:
            try:
                data = json.loads(p.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise StoreError(f"{p}: neither a results store nor its JSON export ({exc})") from None
            if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT or "cells" not in data:
                raise StoreError(f"{p}: a JSON file, but not a diffbench sweep export (format '{EXPORT_FORMAT}')")
            if data.get("schema") != SCHEMA_VERSION:
                raise StoreError(
                    f"{p} was exported with results-store schema {data.get('schema')}; this diffbench reads "
                    f"schema {SCHEMA_VERSION}"
                )
            return list(data["cells"])
    with open_store(p, write=False) as s:
        return [c for c in s.cells() if c["status"] in ("done", "skipped")]
