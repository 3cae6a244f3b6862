"""Tables from store rows (no rich here): rows = sampler configuration, columns = NFE; Markdown, CSV, JSON, LaTeX.

Paired differences: every cell of a sweep uses the same seeds, so block k of cell A and block k of cell B
share their latents; the t-interval of the B per-block differences (Student 1908) is far tighter than
either cell's own interval.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffbench.errors import ConfigError

FORMATS = ("md", "csv", "json", "tex")


@dataclass(frozen=True)
class Entry:
    """One table cell: the headline value, its block interval, the NFE spent, or why there is none."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    nfe_spent: int | None = None
    nfe_requested: int | None = None
    note: str | None = None  # skipped / not applicable
    best: bool = False
    cell_id: str | None = None

    @property
    def half_width(self) -> float | None:
        if self.ci_low is None or self.ci_high is None or self.value is None:
            return None
        return (self.ci_high - self.ci_low) / 2


@dataclass
class Table:
    """A metric's table: `rows[config][nfe] -> Entry`, with the conventions every row was run under."""

    metric: str
    better: str
    nfes: list[int]
    configs: list[str]
    entries: dict[str, dict[int, Entry]]
    conventions: dict[str, str] = field(default_factory=dict)  # config -> 'endpoint edm' etc.
    blocks: int | None = None
    n: int | None = None

    def entry(self, config: str, nfe: int) -> Entry | None:
        return self.entries.get(config, {}).get(nfe)


def metrics_in(cells: Sequence[dict[str, Any]]) -> list[str]:
    """Metric names in first-seen order."""
    out: list[str] = []
    for c in cells:
        for m in c.get("results") or {}:
            if m not in out:
                out.append(m)
    return out


def _convention(cell: dict[str, Any]) -> str:
    ep = cell.get("endpoint") or "edm"
    text = f"endpoint {ep}"
    if cell.get("denoise_to_zero"):
        text += " + denoise to 0"
    spec = (cell.get("identity") or {}).get("spec") or {}
    if spec.get("analytic_first_step"):
        text += ", analytic first step"
    return text


def table(cells: Sequence[dict[str, Any]], metric: str) -> Table:
    """The table of one metric over done and skipped cells; best per NFE column marked."""
    nfes: list[int] = []
    configs: list[str] = []
    entries: dict[str, dict[int, Entry]] = {}
    conventions: dict[str, str] = {}
    better, blocks, n = "lower", None, None
    for c in cells:
        nfe = c.get("nfe_requested") if c.get("nfe_requested") is not None else c.get("nfe")
        if nfe is None:
            continue
        cfg = c["config"]
        if cfg not in configs:
            configs.append(cfg)
        if nfe not in nfes:
            nfes.append(nfe)
        conventions.setdefault(cfg, _convention(c))
        if c["status"] == "skipped":
            e = Entry(None, note=f"skipped: {c.get('skip_reason')}", nfe_requested=nfe, cell_id=c["id"])
        else:
            r = (c.get("results") or {}).get(metric)
            if r is None:
                continue
            better = r.get("better", better)
            if r.get("blocks"):
                blocks, n = len(r["blocks"]), r.get("n")
            e = Entry(
                r.get("value"),
                r.get("ci_low"),
                r.get("ci_high"),
                nfe_spent=c.get("nfe"),
                nfe_requested=nfe,
                note=r.get("note"),
                cell_id=c["id"],
            )
        entries.setdefault(cfg, {})[nfe] = e
    nfes.sort()
    for nfe in nfes:
        col = [(cfg, entries[cfg][nfe]) for cfg in configs if nfe in entries.get(cfg, {})]
        vals = [(cfg, e.value) for cfg, e in col if e.value is not None]
        if vals:
            pick = min if better == "lower" else max
            best = pick(v for _, v in vals)
            for cfg, v in vals:
                if v == best:
                    e = entries[cfg][nfe]
                    entries[cfg][nfe] = Entry(**{**e.__dict__, "best": True})
    return Table(metric, better, nfes, configs, entries, conventions, blocks, n)


def fmt_value(e: Entry | None, *, digits: int = 4, interval: bool = True) -> str:
    """'1.2345 ±0.0100 (nfe 19)'; '—' for skipped or not applicable cells."""
    if e is None:
        return ""
    if e.value is None:
        return "—"
    text = f"{e.value:.{digits}g}" if abs(e.value) < 1e-3 and e.value != 0 else f"{e.value:.{digits}f}"
    hw = e.half_width
    if interval and hw is not None and math.isfinite(hw):
        text += f" ±{hw:.2g}"
    if e.nfe_spent is not None and e.nfe_requested is not None and e.nfe_spent != e.nfe_requested:
        text += f" (nfe {e.nfe_spent})"
    return text


def _caption(t: Table) -> str:
    arrow = "lower is better" if t.better == "lower" else "higher is better"
    extra = f"; ± is the 95% t-interval over {t.blocks} seed blocks of n={t.n}" if t.blocks and t.blocks > 1 else ""
    return f"{t.metric} by NFE ({arrow}; best per column marked{extra})"


def _columns(t: Table) -> list[str]:
    return ["config", "convention", *[f"NFE {n}" for n in t.nfes]]


def to_markdown(t: Table, paired: Sequence[str] = ()) -> str:
    """A GitHub Markdown table, the best value per column in bold; paired differences listed below it."""
    lines = [f"**{_caption(t)}**", "", "| " + " | ".join(_columns(t)) + " |", "|" + "---|" * len(_columns(t))]
    for cfg in t.configs:
        cells = []
        for nfe in t.nfes:
            e = t.entry(cfg, nfe)
            s = fmt_value(e)
            cells.append(f"**{s}**" if e is not None and e.best else s)
        lines.append("| " + " | ".join([cfg, t.conventions.get(cfg, ""), *cells]) + " |")
    if paired:
        lines += ["", "Paired differences against the best of each column (same seeds, per-block differences):", ""]
        lines += [f"- {p}" for p in paired]
    return "\n".join(lines) + "\n"


def to_csv(t: Table) -> str:
    """Long form, one row per cell: config, nfe, nfe_spent, value, ci_low, ci_high, best, note."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["metric", "config", "convention", "nfe", "nfe_spent", "value", "ci_low", "ci_high", "best", "note"])
    for cfg in t.configs:
        for nfe in t.nfes:
            e = t.entry(cfg, nfe)
            if e is None:
                continue
            w.writerow(
                [
                    t.metric,
                    cfg,
                    t.conventions.get(cfg, ""),
                    nfe,
                    "" if e.nfe_spent is None else e.nfe_spent,
                    "" if e.value is None else repr(e.value),
                    "" if e.ci_low is None else repr(e.ci_low),
                    "" if e.ci_high is None else repr(e.ci_high),
                    int(e.best),
                    e.note or "",
                ]
            )
    return buf.getvalue()


def to_json(t: Table) -> str:
    """{metric, better, nfes, rows: [{config, convention, cells: {nfe: {...}}}]}."""
    rows = []
    for cfg in t.configs:
        cells = {}
        for nfe in t.nfes:
            e = t.entry(cfg, nfe)
            if e is not None:
                cells[str(nfe)] = {k: v for k, v in e.__dict__.items()}
        rows.append({"config": cfg, "convention": t.conventions.get(cfg, ""), "cells": cells})
    return json.dumps(
        {"metric": t.metric, "better": t.better, "nfes": t.nfes, "blocks": t.blocks, "n": t.n, "rows": rows},
        indent=1,
    )


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"), ("$", r"\$")):
        s = s.replace(a, b)
    return s


def to_latex(t: Table) -> str:
    """A booktabs tabular; the best value per column in \\textbf."""
    cols = "l" + "r" * len(t.nfes)
    out = [
        "% " + _caption(t),
        f"\\begin{{tabular}}{{{cols}}}",
        "\\toprule",
        " & ".join(["config", *[f"NFE {n}" for n in t.nfes]]) + " \\\\",
        "\\midrule",
    ]
    for cfg in t.configs:
        cells = []
        for nfe in t.nfes:
            e = t.entry(cfg, nfe)
            s = _tex(fmt_value(e)).replace("±", "$\\pm$").replace("—", "--")
            cells.append(f"\\textbf{{{s}}}" if e is not None and e.best else s)
        out.append(" & ".join([_tex(cfg), *cells]) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


RENDER = {"md": to_markdown, "csv": to_csv, "json": to_json, "tex": to_latex}


def write_reports(cells: Sequence[dict[str, Any]], out: str | os.PathLike, *, plot: bool = True) -> list[Path]:
    """Every table format for every metric (and the plots) into a folder; returns the files written."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    metrics = metrics_in(cells)
    if not metrics:
        raise ConfigError("no finished cells to report")
    for m in metrics:
        t = table(cells, m)
        stem = m.replace("/", "_")
        for fmt, fn in RENDER.items():
            p = folder / f"{stem}.{fmt}"
            p.write_text(to_markdown(t, paired_rows(cells, m)) if fmt == "md" else fn(t))
            written.append(p)
        if plot:
            from diffbench.sweep.plot import plot_table

            written += plot_table(t, folder / stem)
    return written


# ---- paired differences ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paired:
    """a − b over paired seed blocks: the mean difference, its t-interval, and whether it excludes 0."""

    metric: str
    difference: float
    ci_low: float
    ci_high: float
    blocks: int
    better: str

    @property
    def significant(self) -> bool:
        return not (self.ci_low <= 0 <= self.ci_high)

    def verdict(self, a: str = "a", b: str = "b") -> str:
        if not math.isfinite(self.ci_low):
            return "unknown: needs at least 2 paired seed blocks"
        if not self.significant:
            return "within noise (the paired interval contains 0)"
        a_better = (self.difference < 0) == (self.better == "lower")
        return f"{a if a_better else b} is better (the paired interval excludes 0)"


def paired_blocks(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Mean of per-block differences a_k − b_k and its 95% t-interval (Student 1908)."""
    from scipy import stats as sps

    if len(a) != len(b) or not a:
        raise ConfigError(f"paired differences need the same seed blocks on both sides ({len(a)} vs {len(b)})")
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / len(d)
    if len(d) < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    half = float(sps.t.ppf(0.975, len(d) - 1)) * sd / math.sqrt(len(d))
    return mean, mean - half, mean + half


def _seeds(cell: dict[str, Any]) -> Any:
    ident = cell.get("identity") or {}
    return ident.get("seeds"), ident.get("blocks"), ident.get("class")


def paired_difference(a: dict[str, Any], b: dict[str, Any], metric: str) -> Paired:
    """a − b of two finished cells that used the same seeds and blocks."""
    if _seeds(a) != _seeds(b):
        raise ConfigError("the two cells used different seeds or blocks, so their blocks are not paired")
    ra, rb = (a.get("results") or {}).get(metric), (b.get("results") or {}).get(metric)
    if ra is None or rb is None or ra.get("value") is None or rb.get("value") is None:
        raise ConfigError(f"metric {metric} is missing in one of the two cells")
    ba, bb = ra.get("blocks") or [], rb.get("blocks") or []
    if len(ba) > 1 and None not in ba and None not in bb:
        mean, lo, hi = paired_blocks(ba, bb)
    else:
        mean, lo, hi = ra["value"] - rb["value"], math.nan, math.nan
    return Paired(metric, mean, lo, hi, len(ba), ra.get("better", "lower"))


def find_cell(cells: Sequence[dict[str, Any]], config: str, nfe: int) -> dict[str, Any]:
    """The finished cell of a configuration at a requested NFE."""
    for c in cells:
        if c["config"] == config and (c.get("nfe_requested") or c.get("nfe")) == nfe and c["status"] == "done":
            return c
    raise ConfigError(f"no finished cell '{config}' at NFE {nfe}")


def paired_rows(cells: Sequence[dict[str, Any]], metric: str) -> list[str]:
    """Per NFE column: each configuration minus the column's best, over paired seed blocks (needs blocks > 1)."""
    t = table(cells, metric)
    by_id = {c["id"]: c for c in cells}
    lines = []
    for nfe in t.nfes:
        col = [(cfg, t.entry(cfg, nfe)) for cfg in t.configs]
        col = [(cfg, e) for cfg, e in col if e is not None and e.value is not None and e.cell_id in by_id]
        best = [(cfg, e) for cfg, e in col if e.best]
        if len(col) < 2 or not best:
            continue
        bcfg, be = best[0]
        for cfg, e in col:
            if cfg == bcfg:
                continue
            p = paired_difference(by_id[e.cell_id], by_id[be.cell_id], metric)  # type: ignore[index]
            if not math.isfinite(p.ci_low):
                continue
            lines.append(
                f"NFE {nfe}: {cfg} − {bcfg} = {p.difference:+.4g}, paired 95% interval "
                f"[{p.ci_low:+.3g}, {p.ci_high:+.3g}] over {p.blocks} blocks: {p.verdict(cfg, bcfg)}"
            )
    return lines
