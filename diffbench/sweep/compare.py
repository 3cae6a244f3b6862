"""`compare`: two stores or JSON exports cell by cell; a CI gate (exit 1 on a regression, 2 on bad input).

A cell regresses when its metric is worse (in that metric's direction) than the baseline's by more than the
tolerance and, where both sides have seed blocks, the paired interval of the per-block differences lies
entirely on the worse side (the same seeds make the blocks paired).

Every baseline cell must be in NEW (matched by identity: everything that determines its numbers); a baseline
cell whose sampler NEW ran on other seeds (or another metric set) is reported as such. NEW cells without a
baseline (an extended sweep) are listed and pass.
"""

from __future__ import annotations

import json
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
    unmatched_new: tuple[str, ...] = ()  # labels of NEW cells without a baseline (they pass)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.regression]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0


def _nfe(c: dict[str, Any]) -> Any:
    return c.get("nfe_requested") if c.get("nfe_requested") is not None else c.get("nfe")


def _policy(c: dict[str, Any]) -> str:
    spec = (c.get("identity") or {}).get("spec") or {}
    return str(spec.get("nfe_policy") or "exact")


def _config(c: dict[str, Any]) -> str:
    """The configuration's label, naming a budget policy other than exact (older stores did not)."""
    cfg = str(c["config"])
    if _policy(c) != "exact" and "nfe-policy" not in cfg:
        cfg += f" nfe-policy={_policy(c)}"
    return cfg


def _label(c: dict[str, Any]) -> str:
    """'heun edm' at NFE 10; a cell that spent another NFE than it asked for (nfe_policy nearest/floor) says
    so, and its policy is named, so it never shares a label with the exact cell of the same configuration."""
    text = f"'{_config(c)}' at NFE {_nfe(c)}"
    if c.get("nfe") is not None and c.get("nfe") != _nfe(c):
        text += f" (spent {c.get('nfe')})"
    return text


_RUN_KEYS = {"seeds": "seeds", "blocks": "seed blocks", "class": "class", "metrics": "metrics"}


def _sampler_key(c: dict[str, Any]) -> str:
    """What a cell's identity holds apart from how the sweep was run (seeds, blocks, class, metric set)."""
    ident = {k: v for k, v in (c.get("identity") or {}).items() if k not in (*_RUN_KEYS, "metric_options")}
    return json.dumps(ident, sort_keys=True, default=str)


def _run_of(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    idents = [c.get("identity") or {} for c in cells]
    return {k: sorted({json.dumps(i.get(k), default=str) for i in idents}) for k in _RUN_KEYS}


def _differs(new: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]]) -> str:
    """'seeds 0-59 against 0-29' for the run settings in which two sets of cells differ."""
    rn, rb = _run_of(new), _run_of(baseline)
    parts = []
    for k, what in _RUN_KEYS.items():
        if rn[k] != rb[k]:
            show = lambda v: ", ".join(str(json.loads(x)) for x in v)  # noqa: E731
            parts.append(f"{what} {show(rn[k])} in NEW against {show(rb[k])} in the baseline")
    return "; ".join(parts) or "other run settings"


def _some(labels: Sequence[str], n: int = 4) -> str:
    more = f"; and {len(labels) - n} more" if len(labels) > n else ""
    return "; ".join(labels[:n]) + more


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
    """Match cells by identity (what determines their numbers) and compare every shared metric.

    A baseline cell missing from NEW is an error (CompareInputError), and one whose sampler NEW ran with other
    seeds, blocks or metrics says so; NEW cells without a baseline are listed in `unmatched_new` and pass.
    """
    bn = {c["id"]: c for c in new if c["status"] == "done"}
    bb = {c["id"]: c for c in baseline if c["status"] == "done"}
    if not bb:
        raise CompareInputError("the baseline holds no finished cells")
    missing = [c for i, c in bb.items() if i not in bn]
    if missing:
        by_sampler: dict[str, list[dict[str, Any]]] = {}
        for c in bn.values():
            by_sampler.setdefault(_sampler_key(c), []).append(c)
        rerun = [c for c in missing if _sampler_key(c) in by_sampler]
        gone = [c for c in missing if _sampler_key(c) not in by_sampler]
        parts = []
        if rerun:
            twins = [t for c in rerun for t in by_sampler[_sampler_key(c)]]
            parts.append(
                f"{len(rerun)} baseline cell(s) were run differently in NEW ({_differs(twins, rerun)}), so their "
                f"numbers are not comparable: {_some([_label(c) for c in rerun])}"
            )
        if gone:
            parts.append(f"{len(gone)} baseline cell(s) missing from NEW: {_some([_label(c) for c in gone])}")
        raise CompareInputError(". ".join(parts))
    unmatched = tuple(_label(c) for i, c in bn.items() if i not in bb)
    rows: list[Row] = []
    for cid, b in bb.items():
        n = bn[cid]
        config = _config(b)
        rb, rn = b.get("results") or {}, n.get("results") or {}
        names = [m for m in rb if metrics is None or m in metrics]
        absent = [m for m in names if m not in rn]
        if absent:
            raise CompareInputError(f"metric {absent[0]} of baseline cell {_label(b)} is missing in NEW")
        for m in names:
            xb, xn = rb[m], rn[m]
            better = xb.get("better", "lower")
            vb, vn = xb.get("value"), xn.get("value")
            nfe = _nfe(b)
            if vb is None or vn is None:
                rows.append(Row(config, nfe, m, better, vn, vb, None, None, None, False, False, "n/a"))
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
            rows.append(Row(config, nfe, m, better, vn, vb, diff, lo, hi, sign * diff > 0, worse and outside, note))
    return Comparison(rows, tolerance, unmatched)


def compare_paths(
    new: str | os.PathLike,
    baseline: str | os.PathLike,
    *,
    tolerance: str | Tolerance = "0%",
    metrics: Sequence[str] | None = None,
) -> Comparison:
    """compare_cells over two stores or JSON exports; bad input raises CompareInputError (exit 2)."""
    tol = tolerance if isinstance(tolerance, Tolerance) else parse_tolerance(tolerance)
    try:
        return compare_cells(_load(new, "NEW"), _load(baseline, "BASELINE"), tolerance=tol, metrics=metrics)
    except CompareInputError:
        raise
    except (DiffbenchError, OSError, ValueError, KeyError, TypeError) as exc:  # malformed input, never "regression"
        raise CompareInputError(f"cannot compare {new} with {baseline}: {exc}") from None
