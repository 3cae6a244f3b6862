"""The results store: one SQLite file (WAL), a schema version, one row per cell with its full provenance.

A running cell's accumulators are checkpointed in the same transaction as its count of finished seeds, so a
killed sweep resumes from its last finished batch. A sweep holds an exclusive lock (flock on STORE.lock,
released by the OS when the process dies) so two sweeps never write one store. A file of another schema,
or not a store at all, is refused and never modified; a damaged one (truncated, malformed) is one line.

Exports are standard JSON (NaN as null, infinities as "inf" / "-inf", as every --json output) and name the
store they came from; `check_store_path` and `check_out_folder` check output paths before a sweep starts.
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

from diffbench.errors import DiffbenchError, OutputExistsError
from diffbench.io_json import plain_json

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


def _damaged(path: Path, exc: BaseException) -> StoreError:
    return StoreError(f"{path}: not a readable results store, damaged or truncated ({exc})")


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
            try:
                self.con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
                version = _schema_of(self.con, self.path)
                self._check_version(version)
                self.cells()  # every row readable, or one line now rather than a traceback later
            except sqlite3.DatabaseError as exc:
                self.close()
                raise _damaged(self.path, exc) from None
            except BaseException:
                self.close()
                raise
            return
        existed = self.path.exists()
        if existed:
            _check_file(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _Lock(self.path)
        lock_existed = self._lock.path.exists()
        self._lock.acquire()

        def forget() -> None:  # a refused store leaves nothing behind that was not there before
            self.close()
            if not lock_existed:
                with contextlib.suppress(OSError):
                    self._lock.path.unlink()  # type: ignore[union-attr]
            if not existed:
                for extra in ("", "-wal", "-shm", "-journal"):
                    with contextlib.suppress(OSError):
                        Path(str(self.path) + extra).unlink()

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
            forget()
            raise _damaged(self.path, exc) from None
        except BaseException:
            forget()
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
        con = getattr(self, "con", None)
        if con is not None:
            with contextlib.suppress(sqlite3.Error):
                con.close()
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
        try:
            return [self._row(r) for r in self.con.execute(q + " ORDER BY position, created, id", args)]
        except sqlite3.DatabaseError as exc:
            raise _damaged(self.path, exc) from None

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

    def annotate(self, cell_id: str, note: str | None) -> None:
        """Record (or clear) a note on a finished cell, under `note` in its provenance (e.g. that a cap makes it
        the same sampler as another cell)."""
        row = self.get(cell_id)
        if row is None or row["status"] != "done":
            return
        prov = dict(row.get("provenance") or {})
        if prov.get("note") == note:
            return
        if note is None:
            prov.pop("note", None)
        else:
            prov["note"] = note
        with self.con:
            self.con.execute("UPDATE cells SET provenance=? WHERE id=?", (json.dumps(prov, default=str), cell_id))

    def record_published(self, cell_id: str, entries: list[dict[str, Any]]) -> None:
        """A recipe's published values beside this cell's (diffbench/recipes), under `published` in its provenance."""
        row = self.get(cell_id)
        if row is None or row["status"] != "done":
            return
        prov = {**(row.get("provenance") or {}), "published": entries}
        with self.con:
            self.con.execute("UPDATE cells SET provenance=? WHERE id=?", (json.dumps(prov, default=str), cell_id))

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
            "store": str(self.path.resolve()),
            "created": meta.get("created"),
            "exported": _now(),
            "cells": [c for c in self.cells() if c["status"] in ("done", "skipped")],
        }

    def export_json(self, path: str | os.PathLike) -> Path:
        """Write `export()` to a file (atomically), as standard JSON."""
        return write_json(path, self.export())


def to_json_text(data: Any) -> str:
    """Standard JSON (no NaN / Infinity tokens: null and "inf" / "-inf", as every --json output)."""
    return json.dumps(plain_json(json.loads(json.dumps(data, default=str))), indent=1, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """`data` as standard JSON in a file, written atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(to_json_text(data))
    os.replace(tmp, p)
    return p


def _back_to_floats(value: Any) -> Any:
    """The inverse of the export's "inf" / "-inf" / null for a metric's numbers."""
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, list):
        return [_back_to_floats(v) for v in value]
    return value


def _exported_cell(c: dict[str, Any]) -> dict[str, Any]:
    results = c.get("results")
    if isinstance(results, dict):
        c = dict(c)
        c["results"] = {
            m: {k: _back_to_floats(v) for k, v in r.items()} if isinstance(r, dict) else r for m, r in results.items()
        }
    return c


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
        try:
            with open(p, "rb") as f:
                head = f.read(16)
        except OSError as exc:
            raise StoreError(f"{p}: cannot read ({exc.strerror or exc})") from None
        if head != _MAGIC:
            try:
                data = json.loads(p.read_text())
            except OSError as exc:
                raise StoreError(f"{p}: cannot read ({exc.strerror or exc})") from None
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise StoreError(f"{p}: neither a results store nor its JSON export ({exc})") from None
            if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT or "cells" not in data:
                raise StoreError(f"{p}: a JSON file, but not a diffbench sweep export (format '{EXPORT_FORMAT}')")
            if data.get("schema") != SCHEMA_VERSION:
                raise StoreError(
                    f"{p} was exported with results-store schema {data.get('schema')}; this diffbench reads "
                    f"schema {SCHEMA_VERSION}"
                )
            if not isinstance(data["cells"], list) or not all(isinstance(c, dict) and "id" in c for c in data["cells"]):
                raise StoreError(f"{p}: a diffbench sweep export whose cells are malformed")
            return [_exported_cell(c) for c in data["cells"]]
    with open_store(p, write=False) as s:
        return [c for c in s.cells() if c["status"] in ("done", "skipped")]


# ---- output paths, checked before a sweep starts ----------------------------------------------------------

OWNER_FILE = ".diffbench-store"  # in an output folder: which store its tables, plots and results.json came from


def _probe_folder(folder: Path, what: str) -> None:
    """One line when an existing folder cannot be written (diffbench.io.probe_writable)."""
    from diffbench.io import probe_writable

    exc = probe_writable(folder)
    if exc is not None:
        raise StoreError(f"{what}: cannot write in {folder} ({exc.strerror or exc})")


def _nearest_existing(path: Path, what: str) -> Path:
    """The closest existing ancestor of a path to be created; it must be a folder."""
    p = path.absolute()
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise StoreError(f"{what}: {parent} is a file, not a folder")
            return parent
    raise StoreError(f"{what}: no existing folder above {path}")  # pragma: no cover (/ always exists)


def check_store_path(path: str | os.PathLike) -> None:
    """A store path a sweep can create or resume, checked without creating anything: an existing file must be a
    store of this schema; a new one must be creatable (its folder writable, for it and its .lock)."""
    p = Path(path)
    what = f"--store {p}"
    if p.exists():
        if p.is_dir():
            raise StoreError(f"{what} is a folder, not a results store")
        _check_file(p)
        if p.stat().st_size:
            with open_store(p, write=False):  # schema and rows readable; read-only, touches nothing
                pass
        _probe_folder(p.parent if str(p.parent) else Path("."), what)
        return
    _probe_folder(_nearest_existing(p, what), what)


def folder_owner(folder: str | os.PathLike) -> str | None:
    """The store an output folder's files came from (its marker, else its results.json), or None."""
    f = Path(folder)
    marker = f / OWNER_FILE
    try:
        if marker.is_file():
            return json.loads(marker.read_text()).get("store")
        results = f / "results.json"
        if results.is_file():
            owner = json.loads(results.read_text()).get("store")
            return str(owner) if owner else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return None


def check_out_folder(out: str | os.PathLike, store: str | os.PathLike, *, overwrite: bool = False) -> None:
    """An output folder a sweep can write, checked without creating anything: not a file, writable, and not
    holding the outputs of another store (unless `overwrite`)."""
    o, st = Path(out), Path(store)
    what = f"--out {o}"
    if o.exists():
        if not o.is_dir():
            raise StoreError(f"{what} is a file; the tables, plots and results.json go into a folder")
        owner = folder_owner(o)
        if owner is not None and Path(owner) != st.resolve() and not overwrite:
            raise OutputExistsError(
                f"{o} holds the outputs of another store ({owner}); pass --overwrite to replace them, "
                "or choose another --out"
            )
        _probe_folder(o, what)
        return
    _probe_folder(_nearest_existing(o, what), what)


def claim_out_folder(out: str | os.PathLike, store: str | os.PathLike, files: list[str] | None = None) -> None:
    """Mark an output folder as holding the outputs of `store` (the files it wrote, by name). Claiming a folder
    another store owned (a sweep run with --overwrite) first removes the files that store wrote there, and only
    those, so tables of two stores are never mixed."""
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    marker = o / OWNER_FILE
    mine = str(Path(store).resolve())
    if folder_owner(o) not in (None, mine) and marker.is_file():
        try:
            old = json.loads(marker.read_text()).get("files") or []
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            old = []
        for name in old:
            if isinstance(name, str) and Path(name).name == name and name not in (OWNER_FILE, ""):
                with contextlib.suppress(OSError):
                    (o / name).unlink()
    write_json(marker, {"store": mine, "files": sorted(files or [])})


def default_out_folder(store: str | os.PathLike) -> Path:
    """Where a sweep's outputs go by default: beside the store, named after it (b4.db -> b4/)."""
    p = Path(store)
    stem = p.with_suffix("") if p.suffix else p.with_name(p.name + "-out")
    return stem


def check_writable_folder(folder: str | os.PathLike, what: str) -> None:
    """A folder to write into (existing or to be created), checked without creating anything."""
    f = Path(folder)
    if f.exists():
        if not f.is_dir():
            raise StoreError(f"{what} is a file, not a folder")
        _probe_folder(f, what)
        return
    _probe_folder(_nearest_existing(f, what), what)
