"""Tables from store rows (no rich here): rows = series (sampler configurations), columns = any swept axis
(NFE by default); Markdown, CSV, JSON, LaTeX.

Values and intervals (issue 20): a cell's value is the metric of all N samples; ± is the 95% delete-one-block
jackknife interval over its K seed blocks (diffbench.metrics.jackknife). `<metric>-inf` (fd-inf, fid-inf) is
the jackknife bias-corrected estimate at infinite n, a table of its own in the exports.

Paired differences: every cell of a sweep uses the same seeds, so block k of cell A and block k of cell B
share their latents; the jackknife of θ_A − θ_B over the same blocks (from the stored leave-one-out values)
is far tighter than either cell's own interval. Only cells that spent the same counted NFE are paired.

Results stored before the jackknife (no "loo") are read: their value is the stored metric of all N (`all`),
shown without an interval and marked in a footnote (finished cells keep no block moments to recompute one).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffbench.errors import ConfigError

FORMATS = ("md", "csv", "json", "tex")
NFE = "nfe"  # the default x axis: the requested budget (the NFE actually spent is shown beside it)
# spec keywords of axes drawn on a log x axis (budgets and sigmas); every other axis is linear or categorical
LOG_AXES = ("nfe", "steps", "sigma_min", "sigma_max", "S_min", "S_max")
# spec keywords never offered as axes: how a cell is labelled or stored, not a sampler setting
_NOT_AXES = ("nfe_requested",)


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
    footnote: int | None = None  # number of the table's footnote that explains this cell

    @property
    def half_width(self) -> float | None:
        if self.ci_low is None or self.ci_high is None or self.value is None:
            return None
        return (self.ci_high - self.ci_low) / 2


@dataclass(frozen=True)
class Reading:
    """What a table reads from one metric result of a cell (the one place the result dict is read)."""

    value: float | None  # the metric of all n_all samples
    ci_low: float | None  # its jackknife interval (None without one)
    ci_high: float | None
    better: str | None
    blocks: int | None  # seed blocks behind the interval
    n: int | None  # samples per block
    extractor: str | None  # feature space id, for feature metrics
    note: str | None
    n_all: int | None = None  # samples behind the value
    loo: tuple[float, ...] | None = None  # leave-one-block-out values (None: stored before the jackknife)
    legacy: str | None = None  # why a result stored before the jackknife shows no interval


INF = "-inf"  # suffix of the jackknife bias-corrected metrics: fd-inf is fd at infinite n


def legacy_note(blocks: int | None) -> str:
    """The one line that marks a result stored before the jackknife."""
    over = f"{blocks} blocks" if blocks else "its blocks"
    return (
        f"stored before the jackknife: value = the metric of all N as stored; its old interval (a t-interval over "
        f"{over}, around the block mean) is not shown and the store keeps no block moments of finished cells to "
        "recompute one; rerun the cell for a jackknife interval"
    )


def reading(result: Mapping[str, Any]) -> Reading:
    """A metric result as stored by the cell runner -> Reading (also results stored before the jackknife)."""
    blocks = result.get("blocks")
    k = len(blocks) if blocks else None
    n = result.get("n") if blocks else None
    n_all = result.get("n_all") or (n * k if n and k else None)
    loo = result.get("loo")
    old = result.get("value") is not None and loo is None and k is not None and k > 1
    return Reading(
        value=result.get("all", result.get("value")) if old else result.get("value"),
        ci_low=None if old else result.get("ci_low"),
        ci_high=None if old else result.get("ci_high"),
        better=result.get("better"),
        blocks=k,
        n=n,
        extractor=result.get("extractor"),
        note=result.get("note"),
        n_all=n_all,
        loo=tuple(loo) if loo else None,
        legacy=legacy_note(k) if old else None,
    )


def result_of(cell: Mapping[str, Any], metric: str) -> Mapping[str, Any] | None:
    """A cell's stored result of `metric`; `<m>-inf` is m's bias-corrected estimate read as a result of its own."""
    results = cell.get("results") or {}
    if metric in results or not metric.endswith(INF):
        return results.get(metric)
    base = results.get(metric[: -len(INF)])
    if base is None or base.get("inf") is None:
        return None
    return {
        "value": base["inf"],
        "ci_low": base.get("inf_low"),
        "ci_high": base.get("inf_high"),
        "better": base.get("better"),
        "blocks": base.get("blocks"),
        "n": base.get("n"),
        "n_all": base.get("n_all"),
        "extractor": base.get("extractor"),
        "loo": base.get("loo"),  # the base metric's: marks a jackknife result (not paired on)
        "infinite_n": True,
    }


def inf_metrics(cells: Sequence[dict[str, Any]]) -> list[str]:
    """`<m>-inf` for each stored metric that carries a bias-corrected estimate (fd, fid): export tables."""
    out: list[str] = []
    for c in cells:
        for m, r in (c.get("results") or {}).items():
            if isinstance(r, Mapping) and r.get("inf") is not None and m + INF not in out:
                out.append(m + INF)
    return out


@dataclass(frozen=True)
class Floor:
    """The metric of held-out real data at the table's n: what a perfect sampler would score."""

    value: float
    n: int
    draws: int  # random subsets of the held-out split averaged (1 when n is the whole split)
    of: int  # size of the held-out split
    what: str  # 'held-out real digits'

    def caption(self, metric: str) -> str:
        draws = f", mean over {self.draws} random subsets of the {self.of}" if self.draws > 1 else ""
        return (
            f"floor {metric} = {self.value:.4g}: {self.n} {self.what} (never trained on) against the same "
            f"reference statistics{draws}; real data scores this at n={self.n}, so values near or below it "
            "cannot be told apart from real data by this metric"
        )


@dataclass
class Table:
    """A metric's table: `entries[row][column] -> Entry`, rows the series, columns the values of axis `x`."""

    metric: str
    better: str
    columns: list[Any]
    configs: list[str]
    entries: dict[str, dict[Any, Entry]]
    conventions: dict[str, str] = field(default_factory=dict)  # row -> 'endpoint edm' etc.
    blocks: int | None = None
    n: int | None = None
    x: str = NFE  # the axis of the columns, as shown (flag name)
    footnotes: list[str] = field(default_factory=list)  # footnote k is footnotes[k - 1]
    model: str | None = None
    extractor: str | None = None
    x_log: bool = True  # the x axis is a budget or a sigma (plots use a log x axis)
    floor: Floor | None = None
    floor_skipped: str | None = None  # why no floor was computed, when one was asked for
    n_all: int | None = None  # samples behind each value (N); n is the block size N/K
    fixed: list[str] = field(default_factory=list)  # non-default settings every cell shares: ['guidance 3']

    @property
    def infinite_n(self) -> bool:
        """The table of a bias-corrected estimate at infinite n (fd-inf)."""
        return self.metric.endswith(INF)

    @property
    def nfes(self) -> list[Any]:
        """The columns (NFE values for the default layout)."""
        return self.columns

    def entry(self, config: str, column: Any) -> Entry | None:
        return self.entries.get(config, {}).get(column)

    def header(self, column: Any) -> str:
        """'NFE 5', 'churn 10', 'schedule vp'."""
        return f"{'NFE' if self.x == NFE else self.x} {show(column)}"


def show(value: Any) -> str:
    """An axis value as labels show it: 10.0 -> '10'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


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


def cell_note(cell: Mapping[str, Any]) -> str | None:
    """A note recorded with a cell (in its store row or its provenance), e.g. that a cap makes two values equal."""
    for where in (cell, cell.get("provenance") or {}, cell.get("identity") or {}):
        note = where.get("note", where.get("notes")) if isinstance(where, Mapping) else None
        if isinstance(note, list | tuple):
            note = "; ".join(str(n).strip() for n in note if str(n).strip())
        if isinstance(note, str) and note.strip():
            return note.strip()
    return None


# ---- axes ----------------------------------------------------------------------------------------------------


def _norm(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def cell_axes(cell: Mapping[str, Any], names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The sampler options a cell was given, keyed by shown name (flag name): its identity's spec (a skipped
    cell's options), else its provenance's; `nfe` is the requested budget. Options left at their defaults
    are absent, so a solver's own defaults (its order, its schedule's sigma range) never read as an axis."""
    names = names or {}
    ident = cell.get("identity") or {}
    given = ident.get("spec") or ident.get("options") or (cell.get("provenance") or {}).get("spec") or {}
    out: dict[str, Any] = {}
    for k, v in given.items():
        if v is None or k in _NOT_AXES or k == NFE or isinstance(v, dict | list):
            continue
        out[names.get(k, k)] = _norm(v)
    nfe = cell.get("nfe_requested") if cell.get("nfe_requested") is not None else cell.get("nfe")
    if nfe is not None:
        out[NFE] = int(nfe)
    for k in ("solver", "schedule"):
        if cell.get(k) is not None:
            out[names.get(k, k)] = cell[k]
    return out


# settings a table shows without the fixed line: its columns, its row labels and its convention column
_SHOWN = ("solver", "schedule", "nfe", "nfe_requested", "endpoint", "denoise_to_zero", "analytic_first_step")


def _spec_defaults() -> dict[str, Any]:
    """Spec keyword -> its SamplerSpec default (None for options that are unset by default)."""
    try:
        from diffbench.sampling.spec import SamplerSpec
    except ImportError:  # pragma: no cover - a store read without the sampler
        return {}
    return {f.name: f.default for f in dataclasses.fields(SamplerSpec)}


def fixed_settings(cells: Sequence[Mapping[str, Any]], names: Mapping[str, str] | None = None) -> list[str]:
    """The sampler settings every cell shares that differ from the spec defaults, as 'guidance 3' (shown name,
    then value), in spec order: the settings a table's row labels would otherwise hide. Empty when every
    shared setting is a default (a plain sweep prints no fixed line)."""
    names = names or {}
    defaults = _spec_defaults()
    specs = []
    for c in cells:
        ident = c.get("identity") or {}
        specs.append(ident.get("spec") or ident.get("options") or (c.get("provenance") or {}).get("spec") or {})
    if not specs:
        return []
    out = []
    order = list(defaults) + [k for k in specs[0] if k not in defaults]
    for k in order:
        if k in _SHOWN or k not in specs[0]:
            continue
        v = specs[0][k]
        if v is None or isinstance(v, dict | list) or any(s.get(k) != v for s in specs[1:]):
            continue
        if k in defaults and _norm(v) == _norm(defaults[k]):
            continue
        out.append(f"{names.get(k, k)} {show(_norm(v))}")
    return out


def _neutral(names: Mapping[str, str]) -> dict[str, Any]:
    """Shown name -> the value a solver without that option behaves as (churn 0): such a cell sits there."""
    try:
        from diffbench.sweep.grid import NEUTRAL
    except ImportError:  # pragma: no cover - a grid without neutral values
        return {}
    return {names.get(k, k): _norm(v) for k, v in NEUTRAL.items()}


def all_axes(cells: Sequence[Mapping[str, Any]], names: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """cell_axes of every cell, with options a solver does not take set to their neutral value where other
    cells vary them (dpmpp-2m beside heun churn=0,40 sits at churn 0)."""
    per = [cell_axes(c, names) for c in cells]
    neutral = _neutral(names or {})
    keys = {k for p in per for k in p}
    for p in per:
        for k, v in neutral.items():
            if k in keys and k not in p:
                p[k] = v
    return per


def varying_axes(cells: Sequence[Mapping[str, Any]], names: Mapping[str, str] | None = None) -> dict[str, list[Any]]:
    """Shown axis name -> its distinct values, for every setting with more than one value across the cells
    (NFE first, then solver, schedule and the rest in first-seen order)."""
    values: dict[str, list[Any]] = {}
    for p in all_axes(cells, names):
        for k, v in p.items():
            vs = values.setdefault(k, [])
            if v not in vs:
                vs.append(v)
    return _ordered({k: v for k, v in values.items() if len(v) > 1})


def _ordered(axes: Mapping[str, Any]) -> dict[str, Any]:
    """NFE first, then solver and schedule, then the rest in their order."""
    order = sorted(axes, key=lambda k: {NFE: 0, "solver": 1, "schedule": 2}.get(k, 3))
    return {k: axes[k] for k in order}


def _resolve(
    name: str, axes: Mapping[str, Any], names: Mapping[str, str], flag: str, *, constant: Sequence[str] = ()
) -> str:
    """A user's axis name (flag name, spec keyword, - or _) -> the shown name; an error lists the axes that
    vary. `constant`: settings every cell shares, accepted as a label (a series of one solver reads 'heun')."""
    want = name.strip()
    candidates = {want, want.lower(), want.replace("_", "-"), want.replace("-", "_"), want.lower().lstrip("-")}
    for c in list(candidates):
        if c in names:
            candidates.add(names[c])
    for c in sorted(candidates):
        if c in axes or c in constant:
            return c
    vary = ", ".join(axes) or "none (every cell has the same settings)"
    raise ConfigError(f"{flag} {want}: not an axis that varies across these cells; axes that vary: {vary}")


def layout(
    cells: Sequence[Mapping[str, Any]],
    *,
    x: str | None = None,
    series: Sequence[str] | None = None,
    names: Mapping[str, str] | None = None,
) -> tuple[str, list[str] | None]:
    """Check --x and --series against the axes that vary across the cells; returns (x, series) as shown names
    (series None: the default rows). An x that does not vary, an axis named twice or a varying axis left out
    is one error line; a series may also name a setting every cell shares (it only labels the lines)."""
    names = names or {}
    axes = varying_axes(cells, names)
    constant = sorted({k for p in all_axes(cells, names) for k in p} - set(axes))
    return check_layout(axes, x=x, series=series, names=names, constant=constant)


def check_layout(
    axes: Mapping[str, Any],
    *,
    x: str | None = None,
    series: Sequence[str] | None = None,
    names: Mapping[str, str] | None = None,
    constant: Sequence[str] = (),
) -> tuple[str, list[str] | None]:
    """layout() over a mapping of the varying axes (shown name -> values), e.g. a grid's before it runs;
    `constant` names the settings that do not vary."""
    names = names or {}
    axes = _ordered(axes)
    xs = NFE if x is None else _resolve(x, axes, names, "--x")
    if series is None:
        return xs, None
    out: list[str] = []
    for s in series:
        k = _resolve(s, axes, names, "--series", constant=constant)
        if k == xs:
            raise ConfigError(f"--series {s}: {k} is already the x axis (--x {xs})")
        if k in out:
            raise ConfigError(f"--series names {k} twice")
        out.append(k)
    rest = [k for k in axes if k != xs and k not in out]
    if rest:
        raise ConfigError(
            f"--series {','.join(series)} leaves {', '.join(rest)} varying within a line; add "
            f"{'it' if len(rest) == 1 else 'them'} (--series {','.join([*out, *rest])})"
        )
    return xs, out


def _row_label(p: Mapping[str, Any], keys: Sequence[str]) -> str:
    """'heun edm churn=10 NFE 5': solver and schedule by value, NFE as 'NFE n', others as name=value."""
    parts = []
    for k in keys:
        if k not in p:
            continue
        v = p[k]
        parts.append(show(v) if k in ("solver", "schedule") else (f"NFE {v}" if k == NFE else f"{k}={show(v)}"))
    return " ".join(parts)


def _sortable(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


# ---- the table -------------------------------------------------------------------------------------------


def table(
    cells: Sequence[dict[str, Any]],
    metric: str,
    *,
    x: str | None = None,
    series: Sequence[str] | None = None,
    names: Mapping[str, str] | None = None,
) -> Table:
    """The table of one metric over done and skipped cells: columns the values of axis `x` (NFE by default),
    rows the combinations of the `series` axes (default: the sweep's configuration labels, or with another x
    every other varying axis); best per column marked; cell notes as numbered footnotes."""
    names = names or {}
    legacy = x is None and series is None
    xs, rows_by = layout(cells, x=x, series=series, names=names) if not legacy else (NFE, None)
    per = all_axes(cells, names)
    vary = varying_axes(cells, names)
    if rows_by is None and xs != NFE:  # every other varying axis, labelled as the sweep labels its rows
        rows_by = ["solver", "schedule", *[k for k in vary if k not in (NFE, "solver", "schedule")]]
        rows_by = [k for k in rows_by if k != xs] + ([NFE] if NFE in vary else [])
    columns: list[Any] = []
    configs: list[str] = []
    entries: dict[str, dict[Any, Entry]] = {}
    placed: dict[tuple[str, Any], int] = {}
    conventions: dict[str, str] = {}
    footnotes: list[str] = []
    better, blocks, n, n_all, model, extractor = "lower", None, None, None, None, None
    without_x = 0
    for i, (c, p) in enumerate(zip(cells, per)):
        nfe = c.get("nfe_requested") if c.get("nfe_requested") is not None else c.get("nfe")
        if nfe is None:
            continue
        col = p.get(xs)
        if col is None:
            without_x += 1
            continue
        cfg = c["config"] if rows_by is None else _row_label(p, rows_by)
        if rows_by is not None and (cfg, col) in placed:
            other = per[placed[cfg, col]]
            differ = [k for k in vary if other.get(k) != p.get(k)]
            if differ:
                raise ConfigError(
                    f"cells differ in {', '.join(differ)}, which neither --x nor --series lays out; "
                    f"add {'it' if len(differ) == 1 else 'them'} to --series"
                )
        note = cell_note(c)
        r = result_of(c, metric) if c["status"] != "skipped" else None
        rd = reading(r) if r is not None else None
        if rd is not None and rd.legacy is not None:
            note = rd.legacy if note is None else f"{note}; {rd.legacy}"
        mark = None
        if note is not None:
            if note not in footnotes:
                footnotes.append(note)
            mark = footnotes.index(note) + 1
        if c["status"] == "skipped":
            e = Entry(None, note=f"skipped: {c.get('skip_reason')}", nfe_requested=nfe, cell_id=c["id"], footnote=mark)
        else:
            if rd is None:
                continue
            better = rd.better or better
            if rd.blocks:
                blocks, n, n_all = rd.blocks, rd.n, rd.n_all
            extractor = rd.extractor or extractor
            model = model or (c.get("provenance") or {}).get("model_name")
            e = Entry(
                rd.value,
                rd.ci_low,
                rd.ci_high,
                nfe_spent=c.get("nfe"),
                nfe_requested=nfe,
                note=rd.note,
                cell_id=c["id"],
                footnote=mark,
            )
        if cfg not in configs:
            configs.append(cfg)
        if col not in columns:
            columns.append(col)
        conventions.setdefault(cfg, _convention(c))
        entries.setdefault(cfg, {})[col] = e
        placed[cfg, col] = i
    if _sortable(columns):
        columns.sort()
    for col in columns:
        found = [(cfg, entries[cfg][col].value) for cfg in configs if col in entries.get(cfg, {})]
        vals = [(cfg, v) for cfg, v in found if v is not None]
        if len(vals) > 1:  # a column of one cell has no best
            pick = min if better == "lower" else max
            best = pick(v for _, v in vals)
            for cfg, v in vals:
                if v == best:
                    e = entries[cfg][col]
                    entries[cfg][col] = Entry(**{**e.__dict__, "best": True})
    if without_x:
        footnotes.append(f"{without_x} cell(s) have no {xs} setting (the option does not apply) and are not shown")
    spec_key = {v: k for k, v in names.items()}.get(xs, xs)
    return Table(
        metric,
        better,
        columns,
        configs,
        entries,
        conventions,
        blocks,
        n,
        x=xs,
        footnotes=footnotes,
        model=model,
        extractor=extractor,
        x_log=spec_key in LOG_AXES,
        n_all=n_all,
        fixed=fixed_settings(cells, names),
    )


def fmt_value(e: Entry | None, *, digits: int = 4, interval: bool = True) -> str:
    """'1.2345 ±0.0100 (nfe 19) [1]'; '—' for skipped or not applicable cells; [k] names a footnote."""
    if e is None:
        return ""
    mark = f" [{e.footnote}]" if e.footnote is not None else ""
    if e.value is None:
        return "—" + mark
    text = f"{e.value:.{digits}g}" if abs(e.value) < 1e-3 and e.value != 0 else f"{e.value:.{digits}f}"
    hw = e.half_width
    if interval and hw is not None and math.isfinite(hw):
        text += f" ±{hw:.2g}"
    if e.nfe_spent is not None and e.nfe_requested is not None and e.nfe_spent != e.nfe_requested:
        text += f" (nfe {e.nfe_spent})"
    return text + mark


def _caption(t: Table) -> str:
    arrow = "lower is better" if t.better == "lower" else "higher is better"
    base = t.metric[: -len(INF)] if t.infinite_n else t.metric
    of = f"the {base.upper() if base in ('fd', 'fid') else base} of all {t.n_all or 'N'}"
    extra = ""
    if t.infinite_n:
        extra = f"; estimate at infinite n: the jackknife bias-corrected {base} (K·θ − (K−1)·θ̄ over {t.blocks} blocks)"
        if t.blocks and t.blocks > 1:
            extra += ", ± its 95% jackknife interval"
    elif t.blocks and t.blocks > 1:
        extra = f"; ± is the 95% jackknife interval over {t.blocks} blocks of {of}"
    by = "NFE" if t.x == NFE else t.x
    marked = "; best per column marked" if any(e.best for row in t.entries.values() for e in row.values()) else ""
    return f"{t.metric} by {by} ({arrow}{marked}{extra})"


def notes_below(t: Table) -> list[str]:
    """The lines printed under a table: numbered footnotes, then the floor (or why there is none)."""
    lines = [f"fixed: {', '.join(t.fixed)}"] if t.fixed else []
    lines += [f"[{k}] {text}" for k, text in enumerate(t.footnotes, 1)]
    if t.floor is not None:
        lines.append(t.floor.caption(t.metric))
    elif t.floor_skipped:
        lines.append(f"no floor: {t.floor_skipped}")
    return lines


def _columns(t: Table) -> list[str]:
    return ["config", "convention", *[t.header(c) for c in t.columns]]


def to_markdown(t: Table, paired: Sequence[str] = ()) -> str:
    """A GitHub Markdown table, the best value per column in bold; footnotes and paired differences below it."""
    lines = [f"**{_caption(t)}**", "", "| " + " | ".join(_columns(t)) + " |", "|" + "---|" * len(_columns(t))]
    for cfg in t.configs:
        cells = []
        for col in t.columns:
            e = t.entry(cfg, col)
            s = fmt_value(e)
            cells.append(f"**{s}**" if e is not None and e.best else s)
        lines.append("| " + " | ".join([cfg, t.conventions.get(cfg, ""), *cells]) + " |")
    below = notes_below(t)
    if below:
        lines += ["", *below]
    if paired:
        head = "Paired differences against the best of each column at the same counted NFE"
        if t.x != NFE:
            head += f", and along each row against its first {t.x} value"
        lines += ["", f"{head} (same seeds: jackknife of the difference over the shared blocks):", ""]
        lines += [f"- {p}" for p in paired]
    return "\n".join(lines) + "\n"


def to_csv(t: Table) -> str:
    """Long form, one row per cell: config, nfe, nfe_spent, value, ci_low, ci_high, best, note (and the x
    axis's value in a column of its own when it is not NFE)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    extra = [] if t.x == NFE else [t.x]
    w.writerow(
        ["metric", "config", "convention", *extra, "nfe", "nfe_spent", "value", "ci_low", "ci_high", "best", "note"]
    )
    for cfg in t.configs:
        for col in t.columns:
            e = t.entry(cfg, col)
            if e is None:
                continue
            note = "; ".join(s for s in (e.note, t.footnotes[e.footnote - 1] if e.footnote is not None else None) if s)
            w.writerow(
                [
                    t.metric,
                    cfg,
                    t.conventions.get(cfg, ""),
                    *([show(col)] if extra else []),
                    "" if e.nfe_requested is None else e.nfe_requested,
                    "" if e.nfe_spent is None else e.nfe_spent,
                    "" if e.value is None else repr(e.value),
                    "" if e.ci_low is None else repr(e.ci_low),
                    "" if e.ci_high is None else repr(e.ci_high),
                    int(e.best),
                    note,
                ]
            )
    return buf.getvalue()


def to_json(t: Table) -> str:
    """{metric, better, x, nfes (the columns), rows: [{config, convention, cells: {column: {...}}}], footnotes}."""
    rows = []
    for cfg in t.configs:
        cells = {}
        for col in t.columns:
            e = t.entry(cfg, col)
            if e is not None:
                cells[show(col)] = {k: v for k, v in e.__dict__.items()}
        rows.append({"config": cfg, "convention": t.conventions.get(cfg, ""), "cells": cells})
    data: dict[str, Any] = {
        "metric": t.metric,
        "better": t.better,
        "nfes": t.columns,
        "blocks": t.blocks,
        "n": t.n,
        "n_all": t.n_all,
        "interval": "95% delete-one-block jackknife of the value of all n_all samples",
        "rows": rows,
    }
    if t.x != NFE:
        data["x"] = t.x
    if t.fixed:
        data["fixed"] = t.fixed
    if t.footnotes:
        data["footnotes"] = t.footnotes
    if t.floor is not None:
        data["floor"] = {**t.floor.__dict__, "caption": t.floor.caption(t.metric)}
    return json.dumps(data, indent=1, default=str)


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"), ("$", r"\$")):
        s = s.replace(a, b)
    return s


def to_latex(t: Table) -> str:
    """A booktabs tabular; the best value per column in \\textbf; footnotes as comments below it."""
    cols = "l" + "r" * len(t.columns)
    out = [
        "% " + _caption(t),
        f"\\begin{{tabular}}{{{cols}}}",
        "\\toprule",
        " & ".join(["config", *[_tex(t.header(c)) for c in t.columns]]) + " \\\\",
        "\\midrule",
    ]
    for cfg in t.configs:
        cells = []
        for col in t.columns:
            e = t.entry(cfg, col)
            s = _tex(fmt_value(e)).replace("±", "$\\pm$").replace("—", "--")
            cells.append(f"\\textbf{{{s}}}" if e is not None and e.best else s)
        out.append(" & ".join([_tex(cfg), *cells]) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    out += ["% " + line for line in notes_below(t)]
    return "\n".join(out) + "\n"


RENDER = {"md": to_markdown, "csv": to_csv, "json": to_json, "tex": to_latex}


class Written(list):  # type: ignore[type-arg]
    """The files a report wrote, and what it skipped (one line each: what and why)."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[str] = []


def write_reports(
    cells: Sequence[dict[str, Any]],
    out: str | os.PathLike,
    *,
    plot: bool = True,
    x: str | None = None,
    series: Sequence[str] | None = None,
    names: Mapping[str, str] | None = None,
    floor: bool = False,
) -> Written:
    """Every table format for every metric (and the plots) into a folder; returns the files written.

    The tables are written first; a plot (or a floor) that cannot be made is listed in `.skipped` with its
    reason, never an error at the end."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = Written()
    metrics = metrics_in(cells)
    if not metrics:
        raise ConfigError("no finished cells to report")
    layout(cells, x=x, series=series, names=names)  # a bad axis fails before any file is written
    for m in [*metrics, *inf_metrics(cells)]:  # the estimates at infinite n: on in the exports
        t = table(cells, m, x=x, series=series, names=names)
        if floor:
            add_floor(t, cells)
        stem = m.replace("/", "_")
        for fmt, fn in RENDER.items():
            p = folder / f"{stem}.{fmt}"
            paired = paired_rows(cells, m, table_=t) if fmt == "md" and not t.infinite_n else []
            p.write_text(to_markdown(t, paired) if fmt == "md" else fn(t))
            written.append(p)
        if plot:
            try:
                from diffbench.sweep.plot import plot_table

                written += plot_table(t, folder / stem)
            except Exception as exc:  # the tables are written; a plot is never worth failing the run for
                written.skipped.append(f"plot of {m}: {exc}")
    return written


# ---- the floor -------------------------------------------------------------------------------------------

HELDOUT_DRAWS = 8  # random held-out subsets averaged when the table's n is below the split's size


def heldout_floor(cells: Sequence[Mapping[str, Any]], metric: str, n: int | None) -> tuple[Floor | None, str | None]:
    """(floor, None) or (None, why not): the metric of n held-out real images against the reference the cells
    were scored with, through diffbench.fid. Defined for fd in the digits feature space (the built-in digits
    models' held-out split, as benchmarks/digits_quality.py computes the floor 13.5 at n=297)."""
    if metric != "fd":
        return None, f"a floor is defined for fd in the digits feature space, not for {metric}"
    done = [c for c in cells if c.get("status") == "done" and metric in (c.get("results") or {})]
    if not done or not n:
        return None, "no finished cells to take n from"
    prov = done[0].get("provenance") or {}
    ex = reading(done[0]["results"][metric]).extractor or prov.get("extractor") or ""
    if not str(ex).startswith("digits"):
        return None, f"held-out real data is shipped only for the digits feature space (this table: {ex or '?'})"
    if any((c.get("identity") or {}).get("class") is not None for c in done):
        return None, "the cells sample one fixed class; the held-out split mixes every class"
    ref = prov.get("ref")
    if not ref or not Path(str(ref)).exists():
        return None, f"the reference statistics the cells used ({ref}) are not on this machine"
    import numpy as np
    import torch

    import diffbench
    from diffbench.models.builtin import digits_data

    images, _ = digits_data().split("heldout")
    size = len(images)
    if n > size:
        return None, f"the held-out split has {size} images, fewer than the table's n={n}"
    rng = np.random.default_rng(0)
    picks = [np.arange(size)] if n == size else [rng.choice(size, n, replace=False) for _ in range(HELDOUT_DRAWS)]
    values = [
        diffbench.fid(torch.from_numpy(images[idx]), ref=str(ref), extractor="digits", allow_small_n=True).fid
        for idx in picks
    ]
    return Floor(float(np.mean(values)), n, len(picks), size, "held-out real digits"), None


def add_floor(t: Table, cells: Sequence[Mapping[str, Any]]) -> Table:
    """Set t.floor (or t.floor_skipped with the reason); a floor that cannot be computed is never an error."""
    try:
        t.floor, t.floor_skipped = heldout_floor(cells, t.metric, t.n_all or t.n)
    except Exception as exc:  # an optional line on a finished report: say why, keep the rest
        t.floor, t.floor_skipped = None, f"could not compute it ({exc})"
    return t


# ---- paired differences ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paired:
    """a − b of two cells' values: the difference, its 95% interval, and which test gave it.

    test: 'paired jackknife' (same seeds and blocks: the jackknife of θ_A − θ_B over the shared blocks),
    'unpaired' (other seeds or blocks: the two jackknife SEs combined), or 'none' (no interval)."""

    metric: str
    difference: float
    ci_low: float
    ci_high: float
    blocks: int
    better: str
    test: str = "paired jackknife"
    why: str = ""  # why there is no interval (test 'none')

    @property
    def significant(self) -> bool:
        return math.isfinite(self.ci_low) and not (self.ci_low <= 0 <= self.ci_high)

    def verdict(self, a: str = "a", b: str = "b") -> str:
        if not math.isfinite(self.ci_low):
            return f"unknown: {self.why or 'needs at least 2 seed blocks'}"
        if not self.significant:
            return f"within noise (the {self.test} interval contains 0)"
        a_better = (self.difference < 0) == (self.better == "lower")
        return f"{a if a_better else b} is better (the {self.test} interval excludes 0)"


def paired_jackknife(
    value_a: float, loo_a: Sequence[float], value_b: float, loo_b: Sequence[float]
) -> tuple[float, float, float]:
    """θ_A − θ_B and its 95% jackknife interval over the same K blocks, from each side's leave-one-out values."""
    from diffbench.metrics.jackknife import jackknife, paired

    if len(loo_a) != len(loo_b) or len(loo_a) < 2:
        raise ConfigError(f"paired differences need the same seed blocks on both sides ({len(loo_a)} vs {len(loo_b)})")
    d = paired(jackknife(value_a, loo_a), jackknife(value_b, loo_b))
    return d.value, d.ci_low, d.ci_high


def unpaired_jackknife(
    value_a: float, loo_a: Sequence[float], value_b: float, loo_b: Sequence[float]
) -> tuple[float, float, float]:
    """θ_A − θ_B of cells on different seeds: ± t·√(SE_A² + SE_B²), Welch–Satterthwaite df (Welch 1947)."""
    from diffbench.metrics.jackknife import jackknife, t_quantile

    ja, jb = jackknife(value_a, loo_a), jackknife(value_b, loo_b)
    va, vb = ja.se**2, jb.se**2
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (ja.k - 1) + vb**2 / (jb.k - 1)) if se > 0 else float(ja.k + jb.k - 2)
    half = t_quantile(df) * se if se > 0 else 0.0
    diff = value_a - value_b
    return diff, diff - half, diff + half


def _seeds(cell: dict[str, Any]) -> Any:
    ident = cell.get("identity") or {}
    return ident.get("seeds"), ident.get("blocks"), ident.get("class")


def paired_difference(a: dict[str, Any], b: dict[str, Any], metric: str, *, unpaired: bool = False) -> Paired:
    """a − b of two finished cells: the paired jackknife when both used the same seeds and blocks; cells on other
    seeds raise ConfigError, or with unpaired=True get the unpaired test (and say so)."""
    if metric.endswith(INF):
        raise ConfigError(f"{metric} is an estimate at infinite n: paired differences are of the values of all N")
    same = _seeds(a) == _seeds(b)
    if not same and not unpaired:
        raise ConfigError("the two cells used different seeds or blocks, so their blocks are not paired")
    ra, rb = result_of(a, metric), result_of(b, metric)
    if ra is None or rb is None or ra.get("value") is None or rb.get("value") is None:
        raise ConfigError(f"metric {metric} is missing in one of the two cells")
    da, db = reading(ra), reading(rb)
    assert da.value is not None and db.value is not None
    better = ra.get("better", "lower")
    k = da.blocks or 0
    diff = da.value - db.value
    if da.loo is None or db.loo is None or len(da.loo) < 2 or len(db.loo) < 2:
        legacy = da.legacy or db.legacy
        why = "a cell was stored before the jackknife (no leave-one-out values)" if legacy else "needs 2+ seed blocks"
        return Paired(metric, diff, math.nan, math.nan, k, better, "none", why)
    if same:
        _, lo, hi = paired_jackknife(da.value, da.loo, db.value, db.loo)
        return Paired(metric, diff, lo, hi, k, better, "paired jackknife")
    _, lo, hi = unpaired_jackknife(da.value, da.loo, db.value, db.loo)
    return Paired(metric, diff, lo, hi, k, better, "unpaired")


def find_cell(cells: Sequence[dict[str, Any]], config: str, nfe: int) -> dict[str, Any]:
    """The finished cell of a configuration at a requested NFE."""
    for c in cells:
        if c["config"] == config and (c.get("nfe_requested") or c.get("nfe")) == nfe and c["status"] == "done":
            return c
    raise ConfigError(f"no finished cell '{config}' at NFE {nfe}")


def paired_rows(
    cells: Sequence[dict[str, Any]],
    metric: str,
    *,
    table_: Table | None = None,
    x: str | None = None,
    series: Sequence[str] | None = None,
    names: Mapping[str, str] | None = None,
) -> list[str]:
    """Per column: each row minus the best of the cells that spent the same counted NFE (under nfe_policy
    nearest a column can hold several), the paired jackknife over the shared seed blocks (needs blocks > 1 and
    results with leave-one-out values). When the columns are another axis than NFE (--x guidance), also along
    each row: each x value minus the row's first (the cells differ in the x axis alone), so a table whose
    columns hold one cell each still says whether changing x changed the metric."""
    t = table_ if table_ is not None else table(cells, metric, x=x, series=series, names=names)
    by_id = {c["id"]: c for c in cells}
    pick = min if t.better == "lower" else max
    lines = []

    def line(head: str, e: Entry, a: str, base: Entry, b: str) -> str | None:
        try:
            p = paired_difference(by_id[e.cell_id], by_id[base.cell_id], metric)  # type: ignore[index]
        except ConfigError:  # different seeds (two sweeps in one store): not paired
            return None
        shift = (
            seed_shift(by_id[e.cell_id], by_id[base.cell_id])  # type: ignore[index]
            if metric in ("inv-prob", "class-accuracy")
            else None
        )
        per_seed = "" if shift is None else "; " + shift.describe(a, b)
        if not math.isfinite(p.ci_low):
            return f"{head}: {a} − {b} = {p.difference:+.4g}{per_seed}" if per_seed else None
        return (
            f"{head}: {a} − {b} = {p.difference:+.4g}, paired 95% jackknife interval "
            f"[{p.ci_low:+.3g}, {p.ci_high:+.3g}] over {p.blocks} blocks: {p.verdict(a, b)}{per_seed}"
        )

    for col in t.columns:
        col_entries = [(cfg, t.entry(cfg, col)) for cfg in t.configs]
        found = [(cfg, e) for cfg, e in col_entries if e is not None and e.value is not None and e.cell_id in by_id]
        spent = sorted({e.nfe_spent for _, e in found}, key=lambda v: (v is None, v))
        for nfe in spent:
            group = [(cfg, e) for cfg, e in found if e.nfe_spent == nfe]
            if len(group) < 2:
                continue
            best_value = pick(e.value for _, e in group)  # type: ignore[type-var]
            bcfg, be = next((cfg, e) for cfg, e in group if e.value == best_value)
            head = t.header(col)
            if t.x == NFE and nfe is not None and nfe != col:
                head += f" (counted {nfe})"
            elif t.x != NFE and nfe is not None:
                head += f" at NFE {nfe}"
            for cfg, e in group:
                if cfg != bcfg and (text := line(head, e, cfg, be, bcfg)) is not None:
                    lines.append(text)
    if t.x != NFE:
        for cfg in t.configs:
            row = [(col, t.entry(cfg, col)) for col in t.columns]
            done = [(col, e) for col, e in row if e is not None and e.value is not None and e.cell_id in by_id]
            for col, e in done[1:]:
                (first, fe) = done[0]
                head = cfg if e.nfe_spent == fe.nfe_spent else f"{cfg} (counted NFE {e.nfe_spent} vs {fe.nfe_spent})"
                if (text := line(head, e, t.header(col), fe, t.header(first))) is not None:
                    lines.append(text)
    return lines


@dataclass(frozen=True)
class SeedShift:
    """Per seed, p(c | x) of cell A against cell B (same seeds, so the same latents and classes): how many
    seeds' probability of the intended class rose, fell or stayed (Li & Jiao 2025: guidance lowers E[1/p]
    without raising every sample's p)."""

    rose: int
    fell: int
    same: int

    @property
    def n(self) -> int:
        return self.rose + self.fell + self.same

    def describe(self, a: str = "a", b: str = "b") -> str:
        return (
            f"per seed, p(c|x) under {a} rose for {self.rose / self.n:.1%} and fell for {self.fell / self.n:.1%} "
            f"of {self.n} seeds against {b}"
        )


def seed_shift(a: Mapping[str, Any], b: Mapping[str, Any]) -> SeedShift | None:
    """Rise/fall of p(c | x) seed by seed between two finished cells that both stored inv-prob's per-seed
    log p on the same seeds and classes (None otherwise)."""
    import numpy as np

    from diffbench.metrics.class_prob import PER_SEED, decode_per_seed

    ra, rb = result_of(a, "inv-prob"), result_of(b, "inv-prob")
    if ra is None or rb is None or PER_SEED not in ra or PER_SEED not in rb:
        return None
    ia, ib = a.get("identity") or {}, b.get("identity") or {}
    if (ia.get("seeds"), ia.get("class")) != (ib.get("seeds"), ib.get("class")):
        return None
    la, lb = decode_per_seed(str(ra[PER_SEED])), decode_per_seed(str(rb[PER_SEED]))
    if la.shape != lb.shape or not la.size:
        return None
    return SeedShift(int(np.sum(la > lb)), int(np.sum(la < lb)), int(np.sum(la == lb)))
