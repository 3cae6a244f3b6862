"""Seed lists: '0-63', '0,5,10-12' (EDM's --seeds syntax).

Seeds are integers 0 <= s < 2^32: EDM's generator seeds torch with the seed modulo 2^32, so larger seeds
would silently repeat images. A list holds at most MAX_SEEDS seeds, checked before anything is allocated.
"""

from __future__ import annotations

from diffbench.errors import ConfigError

SEED_LIMIT = 1 << 32  # seeds are 0 <= s < 2^32
# the largest seed list one run accepts: 200x the FID protocol's 50k (a list of 10^8 Python ints is ~3.6 GB)
MAX_SEEDS = 10**7


def check_seed(seed: int) -> int:
    """One seed in [0, 2^32), or one clear error line."""
    if not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"seed {seed} is out of range: seeds are integers 0 <= s < 2^32 (= {SEED_LIMIT})")
    return int(seed)


def parse_seeds(text: str) -> list[int]:
    """Parse comma-separated seeds and inclusive ranges a-b; duplicates, bad parts, seeds outside [0, 2^32)
    and lists longer than MAX_SEEDS are errors (the length is checked before the list is built)."""
    parts: list[tuple[int, int]] = []
    total = 0
    for part in str(text).replace(" ", "").split(","):
        if not part:
            raise ConfigError(f"malformed seed list '{text}': empty item")
        lo, dash, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if dash else (int(part), int(part))
        except ValueError:
            raise ConfigError(f"malformed seed list '{text}': '{part}' is not N or A-B with A, B >= 0") from None
        if b < a:
            raise ConfigError(f"malformed seed range '{part}': end before start")
        check_seed(a)
        check_seed(b)
        total += b - a + 1
        if total > MAX_SEEDS:
            raise ConfigError(f"seed list '{text}' holds more than {MAX_SEEDS:,} seeds (the most one run accepts)")
        parts.append((a, b))
    seeds = [s for a, b in parts for s in range(a, b + 1)]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seed list '{text}' repeats a seed")
    return seeds
