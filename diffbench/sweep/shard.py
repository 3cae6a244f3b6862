"""Many cells across many machines: `--shard I/N` runs only the cells whose identity hashes to shard I.

Shards are numbered from 0 (0/3, 1/3, 2/3), as SLURM's array task ids run with `--array=0-2`. A cell belongs
to shard int(id[:16], 16) mod N, its id being the sha256 of what determines its numbers
(diffbench.sweep.identity): the assignment depends on nothing but the cell itself, so any N works, a rerun of
shard I picks up exactly its own cells (finished ones from its store), and a cell added to the grid later
does not move the others. Counts per shard are balanced only on average (a hash, not a schedule).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffbench.errors import ConfigError


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0 <= index < count)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, cell_id: str) -> bool:
        """True when the cell with this id (a sha256 hex digest) belongs to this shard."""
        return shard_of(cell_id, self.count) == self.index


def shard_of(cell_id: str, count: int) -> int:
    """The shard (0-based) of a cell id among `count` shards: its first 64 bits modulo count."""
    return int(cell_id[:16], 16) % count


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


__all__ = ["Shard", "parse_shard", "shard_of"]
