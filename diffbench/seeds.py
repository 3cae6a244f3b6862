"""Seed lists: '0-63', '0,5,10-12' (EDM's --seeds syntax)."""

from __future__ import annotations

from diffbench.errors import ConfigError


def parse_seeds(text: str) -> list[int]:
    """Parse comma-separated seeds and inclusive ranges a-b; duplicates and bad parts are errors."""
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            raise ConfigError(f"malformed seed list '{text}': empty item")
        lo, dash, hi = part.partition("-")
        try:
            if dash:
                a, b = int(lo), int(hi)
                if b < a:
                    raise ConfigError(f"malformed seed range '{part}': end before start")
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ConfigError(f"malformed seed list '{text}': '{part}' is not N or A-B with A, B >= 0") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seed list '{text}' repeats a seed")
    return seeds
