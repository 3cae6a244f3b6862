"""Many cells across many machines: `--shard I/N` runs only the cells whose identity hashes to shard I.

Shards are numbered from 0 (0/3, 1/3, 2/3), as SLURM's array task ids run with `--array=0-2`. The cells are
dealt out by their cost (NFE, the sampling work per image) and identity alone (`assign`): longest first,
each to the shard with the least work so far, ties broken by the cell id (the sha256 of what determines its
numbers, diffbench.sweep.identity). So every machine computes the same assignment from the same grid, any N
works, shards finish at about the same time, and a rerun of shard I picks up exactly its own cells (finished
ones from its store). A changed grid may move cells between shards: run it into a new set of stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from diffbench.errors import ConfigError


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0 <= index < count)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def assign(cells: Sequence[tuple[str, float]], count: int) -> dict[str, int]:
    """{cell id: shard} for cells given as (id, cost): longest processing time first (Graham 1969), each cell
    to the shard with the least total cost so far (the lowest index among equals), cells of equal cost in id
    order. Deterministic in the set of cells alone (their order does not matter)."""
    load = [0.0] * count
    out: dict[str, int] = {}
    for cid, cost in sorted(cells, key=lambda c: (-float(c[1]), c[0])):
        k = min(range(count), key=lambda i: (load[i], i))
        out[cid] = k
        load[k] += float(cost)
    return out


def parse_shard(text: str) -> Shard:
    """'I/N' with 0 <= I < N and N >= 1; anything else is one ConfigError line."""
    head = f"--shard {text!r}"
    i_text, slash, n_text = str(text).strip().partition("/")
    try:
        if not slash:
            raise ValueError
        index, count = int(i_text), int(n_text)
    except ValueError:
        raise ConfigError(f"{head}: expected I/N, e.g. 0/4 (shards are numbered from 0 to N-1)") from None
    if count < 1:
        raise ConfigError(f"{head}: N must be at least 1")
    if not 0 <= index < count:
        raise ConfigError(
            f"{head}: I must be 0 <= I < N (shards are numbered from 0: 0/{count} ... {count - 1}/{count})"
        )
    return Shard(index, count)


__all__ = ["Shard", "parse_shard", "assign"]
