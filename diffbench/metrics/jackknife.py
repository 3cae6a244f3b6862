"""Delete-one-block jackknife of a metric of all N samples: standard error, interval, bias correction.

A cell's samples fall into K equal seed blocks. The value reported is the metric θ of all N samples (as
papers report FID at 50k); its uncertainty comes from the K leave-one-block-out values θ₍ᵢ₎, each the
metric of the other N(K−1)/K samples (Quenouille 1956; Tukey 1958; Efron & Stein 1981):

    SE² = (K−1)/K · Σᵢ (θ₍ᵢ₎ − θ̄)²,   θ̄ = mean of θ₍ᵢ₎,   interval θ ± t_{K−1, 0.975} · SE

and the bias-corrected estimate K·θ − (K−1)·θ̄, which removes a bias of the form c/n (FD is biased upward
like tr Σ/n; Chong & Forsyth 2020), is the estimate of the metric at infinite n ("FD∞"), with the same SE
(the pseudo-values K·θ − (K−1)·θ₍ᵢ₎ have standard deviation (K−1)·sd(θ₍ᵢ₎), Efron & Stein 1981).

Two cells that share seeds and blocks are paired: the jackknife of θ_A − θ_B over the same blocks uses
θ_A₍ᵢ₎ − θ_B₍ᵢ₎, so what the blocks have in common (the latents) cancels.

benchmarks/coverage.py measures the coverage of these intervals on the built-in model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from diffbench.errors import ConfigError
from diffbench.metrics.moments import Moments, merge

CONFIDENCE = 0.95
T = TypeVar("T")


@dataclass(frozen=True)
class Jackknife:
    """θ of all N samples with its delete-one-block jackknife SE, 95% interval and bias-corrected value.

    value: θ of all N. loo: θ₍ᵢ₎, the K leave-one-block-out values. se: jackknife standard error
    (NaN for K < 2). ci_low/ci_high: value ± t_{K−1}·se. bias_corrected: K·θ − (K−1)·θ̄ (estimate at
    infinite n), interval bc_low/bc_high with the same half-width.
    """

    value: float
    loo: tuple[float, ...]
    se: float
    half_width: float
    bias_corrected: float
    confidence: float = CONFIDENCE

    @property
    def k(self) -> int:
        """Number of blocks K."""
        return len(self.loo)

    @property
    def ci_low(self) -> float:
        return self.value - self.half_width

    @property
    def ci_high(self) -> float:
        return self.value + self.half_width

    @property
    def bc_low(self) -> float:
        return self.bias_corrected - self.half_width

    @property
    def bc_high(self) -> float:
        return self.bias_corrected + self.half_width

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely on one side of 0 (for a paired difference: a detected gap)."""
        return math.isfinite(self.half_width) and not (self.ci_low <= 0.0 <= self.ci_high)


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student-t critical value t_{df, (1+confidence)/2} (Student 1908)."""
    from scipy import stats as sps

    return float(sps.t.ppf(0.5 + confidence / 2.0, df))


def jackknife(value: float, loo: Sequence[float], *, confidence: float = CONFIDENCE) -> Jackknife:
    """The jackknife of θ (the metric of all N) from its K leave-one-block-out values (Efron & Stein 1981).

    value: θ of all N samples. loo: θ₍ᵢ₎ for i = 1..K, each of the other K−1 blocks. With K < 2 the SE,
    the interval and the bias correction are undefined (NaN; bias_corrected = value for K = 1).
    Raises ConfigError when a value is not finite.
    """
    theta = float(value)
    vals = tuple(float(v) for v in loo)
    if not math.isfinite(theta) or not all(math.isfinite(v) for v in vals):
        raise ConfigError("the jackknife needs finite metric values")
    k = len(vals)
    if k < 2:
        return Jackknife(theta, vals, math.nan, math.nan, theta if k <= 1 else math.nan, confidence)
    mean = sum(vals) / k
    # SE² = (K−1)/K Σ (θ₍ᵢ₎ − θ̄)² (Efron & Stein 1981, eq. 1.3)
    se = math.sqrt((k - 1) / k * sum((v - mean) ** 2 for v in vals))
    # bias-corrected estimate K θ − (K−1) θ̄ (Quenouille 1956)
    corrected = k * theta - (k - 1) * mean
    return Jackknife(theta, vals, se, t_quantile(k - 1, confidence) * se, corrected, confidence)


def paired(a: Jackknife, b: Jackknife) -> Jackknife:
    """The jackknife of θ_A − θ_B over the same K blocks (both cells used the same seeds and blocks)."""
    if a.k != b.k:
        raise ConfigError(f"paired differences need the same seed blocks on both sides ({a.k} vs {b.k})")
    if a.confidence != b.confidence:
        raise ConfigError("paired differences need the same confidence level on both sides")
    return jackknife(a.value - b.value, [x - y for x, y in zip(a.loo, b.loo)], confidence=a.confidence)


def leave_one_out(blocks: Sequence[T], combine: Callable[[T, T], T]) -> list[T]:
    """The K combinations of all blocks but one, by prefix and suffix combinations (2K calls, no subtraction).

    combine must be associative (moments merge, row concatenation, sums). Needs K ≥ 2.
    """
    k = len(blocks)
    if k < 2:
        raise ConfigError("leave-one-block-out needs at least 2 blocks")
    prefix = [blocks[0]]  # prefix[i] = blocks 0..i
    for i in range(1, k - 1):
        prefix.append(combine(prefix[-1], blocks[i]))
    suffix = {k - 1: blocks[k - 1]}  # suffix[j] = blocks j..K−1
    for j in range(k - 2, 0, -1):
        suffix[j] = combine(blocks[j], suffix[j + 1])
    return [suffix[1]] + [combine(prefix[i - 1], suffix[i + 1]) for i in range(1, k - 1)] + [prefix[k - 2]]


def leave_one_out_moments(blocks: Sequence[Moments]) -> list[Moments]:
    """Moments of all blocks but block i, for each i, merged exactly (Chan et al. 1979)."""
    return leave_one_out(list(blocks), merge)


def default_blocks(n: int, *, target: int = 20, lowest: int = 10, highest: int = 40) -> int | None:
    """The divisor of n nearest to `target` within [lowest, highest] (ties: the larger), or None.

    None means n has no divisor in range; callers then say so and ask for --blocks (never drop seeds).
    """
    best: int | None = None
    for k in range(lowest, min(highest, n) + 1):
        if n % k == 0 and (best is None or abs(k - target) <= abs(best - target)):
            best = k
    return best
