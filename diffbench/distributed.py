"""One cell across many processes: torch.distributed as torchrun launches it (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT in the environment), over gloo.

Only small Python objects travel between ranks (a batch's features, its seeds, a status), so one gloo group
serves CPU and GPU runs alike and multi-node runs use torchrun's own rendezvous. Every collective answers
within DIFFBENCH_DIST_TIMEOUT seconds (default 1800; a download on one rank may take minutes) or fails as
one line. A failure on one rank is sent to all of them inside the collective that would otherwise wait for
it, so every rank stops with the same line and rank 0 alone prints it (`RankError`); a rank that dies
outright is reported by torchrun, which stops the others.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from diffbench.errors import DiffbenchError

T = TypeVar("T")
TIMEOUT_ENV = "DIFFBENCH_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


class RankError(DiffbenchError):
    """An error every rank of a launch knows (sent through a collective): rank 0 prints it, the others exit
    quietly with the same code."""

    all_ranks = True

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def launched() -> bool:
    """True inside a launch of more than one process (torchrun sets WORLD_SIZE)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def env_rank() -> int:
    """This process's rank as the launcher set it (0 outside a launch)."""
    try:
        return int(os.environ.get("RANK", "0")) if launched() else 0
    except ValueError:
        return 0


@dataclass(frozen=True)
class World:
    """The processes of one launch: this one's rank, their number, and the node-local rank (its GPU)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes stores, reports and images and prints."""
        return self.rank == 0

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except RuntimeError as exc:  # gloo: a timeout or a peer that went away
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DiffbenchError(
                f"rank {self.rank}: no answer from the other ranks while {what} ({first}); a rank died or hangs "
                f"(timeout {timeout_s():g} s, {TIMEOUT_ENV})"
            ) from None

    def all_gather(self, obj: Any, *, what: str = "exchanging data") -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        self._call(what, dist.all_gather_object, out, obj)
        return out

    def gather(self, obj: Any, *, what: str = "gathering results") -> list[Any] | None:
        """Every rank's `obj` in rank order on rank 0; None on the others."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.size if self.main else None
        self._call(what, dist.gather_object, obj, out, 0)
        return out

    def broadcast(self, obj: Any, *, what: str = "waiting for rank 0") -> Any:
        """Rank 0's `obj` on every rank."""
        if self.size == 1:
            return obj
        import torch.distributed as dist

        box = [obj if self.main else None]
        self._call(what, dist.broadcast_object_list, box, 0)
        return box[0]

    def everywhere(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn` on every rank; when it fails on any, every rank raises that rank's error (RankError)."""
        if self.size == 1:
            return fn()
        value, err = _attempt(fn)
        errors = self.all_gather(err, what=what)
        _raise_first(errors, what)
        return value  # type: ignore[return-value]

    def on_main(self, what: str, fn: Callable[[], T]) -> T | None:
        """Run `fn` on rank 0 only (paths only it writes); its error stops every rank. None on the others."""
        if self.size == 1:
            return fn()
        value, err = _attempt(fn) if self.main else (None, None)
        _raise_first([self.broadcast(err, what=what)], what)
        return value

    def exchange(self, produce: Callable[[], Any] | None, *, what: str) -> list[Any]:
        """One round of shared work: each rank runs `produce` (None: no work for it this round); rank 0
        receives the products in rank order, the others []. A DiffbenchError on any rank stops every rank
        with that rank's line (RankError), after the round, so no rank waits for one that failed."""
        if self.size == 1:
            return [] if produce is None else [produce()]
        sent: tuple[str, Any] = ("idle", None)
        if produce is not None:
            try:
                sent = ("ok", produce())
            except DiffbenchError as exc:
                sent = ("error", (str(exc), exc.exit_code))
        got = self.gather(sent, what=what)
        status = None
        if got is not None:
            failed = [(r, v) for r, (kind, v) in enumerate(got) if kind == "error"]
            status = None if not failed else (f"rank {failed[0][0]}: {failed[0][1][0]}", failed[0][1][1])
        status = self.broadcast(status, what=what)
        if status is not None:
            raise RankError(status[0], exit_code=status[1])
        return [] if got is None else [v for kind, v in got if kind == "ok"]

    def agree(self, what: str, value: Any, *, describe: Callable[[Any, Any], str] | None = None) -> None:
        """Refuse (one line, on every rank) when the ranks hold different values of `what`."""
        if self.size == 1:
            return
        values = self.all_gather(value, what=f"comparing {what}")
        for r, v in enumerate(values):
            if v != values[0]:
                diff = describe(values[0], v) if describe is not None else f"{values[0]!r} vs {v!r}"
                raise RankError(
                    f"the ranks disagree on {what} before any work: rank 0 and rank {r} differ ({diff}); "
                    "launch every rank with the same command and files",
                    exit_code=2,
                )


SINGLE = World()
_WORLD: list[World] = []


def timeout_s() -> float:
    """Seconds a collective may wait (DIFFBENCH_DIST_TIMEOUT, default 1800)."""
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def world() -> World:
    """This process's world: one process outside a launch; inside torchrun, the process group joined (gloo)
    on first use and left at exit."""
    if _WORLD:
        return _WORLD[0]
    if not launched():
        return SINGLE
    import torch.distributed as dist

    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise DiffbenchError(
            "WORLD_SIZE is set but RANK is not: launch with torchrun (it sets RANK, LOCAL_RANK, MASTER_ADDR)"
        ) from None
    if not dist.is_available():
        raise DiffbenchError("this torch has no torch.distributed: run without torchrun")
    if not dist.is_initialized():
        try:
            dist.init_process_group("gloo", rank=rank, world_size=size, timeout=datetime.timedelta(seconds=timeout_s()))
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DiffbenchError(f"rank {rank}: joining the other {size - 1} rank(s) failed ({first})") from None
        atexit.register(_leave)
    w = World(rank=rank, size=size, local_rank=local)
    _WORLD.append(w)
    return w


def farewell() -> None:
    """After an error every rank knows: wait (10 s at most) until every rank reached this point, so rank 0 has
    printed the line before torchrun stops the ranks that exit first."""
    if not _WORLD or _WORLD[0].size == 1:
        return
    import torch.distributed as dist

    with contextlib.suppress(Exception):
        dist.monitored_barrier(timeout=datetime.timedelta(seconds=10), wait_all_ranks=True)


def _leave() -> None:
    import torch.distributed as dist

    with contextlib.suppress(Exception):
        if dist.is_initialized():
            dist.destroy_process_group()


def load_on_ranks(w: World, load: Callable[[], T]) -> T:
    """`load()` on every rank, the node's first rank first (a download lands once per node); a rank that
    cannot load stops every rank with its one line. Then every rank must hold the same file (sha256)."""
    if w.size == 1:
        return load()
    first = w.everywhere("loading the model", load if w.local_rank == 0 else lambda: None)
    rest = w.everywhere("loading the model", (lambda: None) if w.local_rank == 0 else load)
    model = first if w.local_rank == 0 else rest
    from diffbench.sweep.bench import model_sha256

    w.agree("the model file (sha256)", model_sha256(model), describe=lambda a, b: f"{a[:12]} vs {b[:12]}")
    return model  # type: ignore[return-value]


def _attempt(fn: Callable[[], T]) -> tuple[T | None, tuple[str, int] | None]:
    try:
        return fn(), None
    except DiffbenchError as exc:
        return None, (str(exc), exc.exit_code)


def _raise_first(errors: list[Any], what: str) -> None:
    """The first rank's error (when any failed) as a RankError on every rank."""
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if not failed:
        return
    r, (msg, code) = failed[0]
    same = all(e == failed[0][1] for _, e in failed) and len(failed) == len(errors)
    raise RankError(msg if same or len(errors) == 1 else f"rank {r}, {what}: {msg}", exit_code=code)


__all__ = ["load_on_ranks", "World", "RankError", "SINGLE", "world", "launched", "env_rank", "timeout_s"]
