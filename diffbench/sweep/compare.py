"""`compare`: two stores or JSON exports cell by cell; a CI gate (exit 1 on a regression, 2 on bad input).

A cell regresses when its metric is worse (in that metric's direction) than the baseline's by more than the
tolerance and, where both sides have seed blocks, the paired interval of the per-block differences lies
entirely on the worse side (the same seeds make the blocks paired).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffbench.errors import DiffbenchError
from diffbench.sweep.report import paired_blocks
from diffbench.sweep.store import StoreError, load_cells


class CompareInputError(DiffbenchError):
    """Bad input to compare: a missing file, an unreadable one, cells that do not match. Exit code 2."""

    exit_code = 2


@dataclass(frozen=True)
class Tolerance:
    """Relative (2%) or absolute (0.05) allowance before a worse value counts."""

    value: float
    relative: bool

    def allowed(self, baseline: float) -> float:
        return self.value * abs(baseline) if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


def parse_tolerance(text: str) -> Tolerance:
    """'2%' -> relative 0.02; '0.05' -> absolute."""
    t = str(text).strip()
    try:
        if t.endswith("%"):
            v, rel = float(t[:-1]) / 100, True
        else:
            v, rel = float(t), False
    except ValueError:
        raise CompareInputError(f"--tolerance '{text}' is not a number or a percentage such as 2%") from None
    if not math.isfinite(v) or v < 0:
        raise CompareInputError(f"--tolerance must be >= 0, got '{text}'")
    return Tolerance(v, rel)


@dataclass(frozen=True)
class Row:
    """One metric of one cell on both sides."""

    config: str
    nfe: int | None
    metric: str
    better: str
    new: float | None
    baseline: float | None
    difference: float | None  # new − baseline
    ci_low: float | None  # paired interval of new − baseline over blocks
    ci_high: float | None
    worse: bool  # in the metric's direction
    regression: bool
    note: str = ""


@dataclass(frozen=True)
class Comparison:
    rows: list[Row]
    tolerance: Tolerance

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.regression]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0


def _label(c: dict[str, Any]) -> str:
    nfe = c.get("nfe_requested") if c.get("nfe_requested") is not None else c.get("nfe")
    return f"'{c['config']}' at NFE {nfe}"


def _load(path: str | os.PathLike, what: str) -> list[dict[str, Any]]:
    try:
        return load_cells(path, what=what)
    except StoreError as exc:
        raise CompareInputError(str(exc)) from None


def compare_cells(
    new: Sequence[dict[str, Any]],
    baseline: Sequence[dict[str, Any]],
    *,
    tolerance: Tolerance,
    metrics: Sequence[str] | None = None,
) -> Comparison:
    """Match cells by identity (what determines their numbers) and compare every shared metric."""
    bn = {c["id"]: c for c in new if c["status"] == "done"}
    bb = {c["id"]: c for c in baseline if c["status"] == "done"}
    missing = [_label(c) for i, c in bb.items() if i not in bn]
    extra = [_label(c) for i, c in bn.items() if i not in bb]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} baseline cell(s) missing from NEW: {'; '.join(missing)}")
        if extra:
            parts.append(f"{len(extra)} cell(s) of NEW not in the baseline: {'; '.join(extra)}")
        raise CompareInputError("the cells do not match: " + ". ".join(parts))
    if not bb:
        raise CompareInputError("the baseline holds no finished cells")
    rows: list[Row] = []
    for cid, b in bb.items():
        n = bn[cid]
        rb, rn = b.get("results") or {}, n.get("results") or {}
        names = [m for m in rb if metrics is None or m in metrics]
        absent = [m for m in names if m not in rn]
        if absent:
            raise CompareInputError(f"metric {absent[0]} of baseline cell {_label(b)} is missing in NEW")
        for m in names:
            xb, xn = rb[m], rn[m]
            better = xb.get("better", "lower")
            vb, vn = xb.get("value"), xn.get("value")
            nfe = b.get("nfe_requested") if b.get("nfe_requested") is not None else b.get("nfe")
            if vb is None or vn is None:
                rows.append(Row(b["config"], nfe, m, better, vn, vb, None, None, None, False, False, "n/a"))
                continue
            diff = vn - vb
            sign = 1.0 if better == "lower" else -1.0  # worse = positive after the sign
            worse = sign * diff > tolerance.allowed(vb)
            lo = hi = None
            blocks_b, blocks_n = xb.get("blocks") or [], xn.get("blocks") or []
            outside = True
            note = ""
            if len(blocks_b) > 1 and len(blocks_b) == len(blocks_n) and None not in blocks_b + blocks_n:
                _, lo, hi = paired_blocks(blocks_n, blocks_b)
                outside = (lo > 0) if better == "lower" else (hi < 0)
                if worse and not outside:
                    note = "worse, but within the paired block interval"
            elif worse:
                note = "no paired blocks: tolerance only"
            rows.append(
                Row(b["config"], nfe, m, better, vn, vb, diff, lo, hi, sign * diff > 0, worse and outside, note)
            )
    return Comparison(rows, tolerance)


def compare_paths(
    new: str | os.PathLike,
    baseline: str | os.PathLike,
    *,
    tolerance: str | Tolerance = "0%",
    metrics: Sequence[str] | None = None,
) -> Comparison:
    """compare_cells over two stores or JSON exports; bad input raises CompareInputError (exit 2)."""
    tol = tolerance if isinstance(tolerance, Tolerance) else parse_tolerance(tolerance)
    return compare_cells(_load(new, "NEW"), _load(baseline, "BASELINE"), tolerance=tol, metrics=metrics)
