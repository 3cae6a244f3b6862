"""A metric over any swept axis, one line per series, error bars from seed blocks (PNG and SVG).

Ticks sit at the swept values; x is logarithmic only for a budget (NFE) or a sigma; error bars are clipped to
the axis; the title names the model, the metric's full name with its feature space and n, and the floor (when
the table carries one) is a dashed line explained in the caption.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from diffbench.errors import MissingDependencyError
from diffbench.sweep.report import NFE, Table, show

# the metrics' full names (the table's short name is what the CLI and the store use)
FULL_NAMES = {
    "fid": "FID (Fréchet distance, Inception-v3 pool3 features)",
    "fd": "Fréchet distance",
    "kid": "KID (kernel distance)",
    "precision": "k-NN precision",
    "recall": "k-NN recall",
    "is": "Inception Score",
    "ref-error": "RMS error to the reference ODE solution",
    "fd-exact": "Fréchet distance to the exact distribution",
    "sw": "sliced Wasserstein-2 distance to the exact distribution",
}
_FEATURE_METRICS = ("fd", "kid", "precision", "recall")


def metric_name(t: Table) -> str:
    """'Fréchet distance (digits-cnn features)': the full name, with the feature space where it has one."""
    name = FULL_NAMES.get(t.metric, t.metric)
    if t.metric in _FEATURE_METRICS and t.extractor:
        name += f" ({str(t.extractor).split('@')[0]} features)"
    return name


def x_label(t: Table) -> str:
    if t.x == NFE:
        return "NFE (network evaluations per sample)"
    return t.x


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError("plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _plain_minor_log_formatter() -> Any:
    """matplotlib's choice of which minor log ticks to label (only over a short range), written as 0.6, 40."""
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):  # type: ignore[misc]
        def __call__(self, x: float, pos: Any = None) -> str:
            return f"{x:g}" if super().__call__(x, pos) else ""

    return Plain(labelOnlyBase=False, minor_thresholds=(2, 0.5))


def figure(t: Table) -> Any:
    """The matplotlib Figure of a table (not saved): one line per row, x the table's columns."""
    plt = _pyplot()
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    numeric = _numeric(t.columns)
    positions = {c: (c if numeric else i) for i, c in enumerate(t.columns)}
    lines = []
    for cfg in t.configs:
        pts = []
        for col in t.columns:
            e = t.entry(cfg, col)
            if e is None or e.value is None:
                continue
            # NFE: where the budget actually landed (nfe_policy nearest), so ticks show the counted NFE
            x = e.nfe_spent if t.x == NFE and e.nfe_spent is not None else positions[col]
            hw = e.half_width
            pts.append((x, e.value, 0.0 if hw is None or not math.isfinite(hw) else hw))
        if pts:
            pts.sort()
            lines.append((cfg, pts))
    xs_all = sorted({p[0] for _, pts in lines for p in pts})
    ys_all = [p[1] for _, pts in lines for p in pts]
    log_x = t.x_log and numeric and bool(xs_all) and all(v > 0 for v in xs_all)
    log_y = bool(ys_all) and all(y > 0 for y in ys_all)
    # the axis bottom: on a log axis the lowest interval end above 0 (or the lowest value), else 0 for metrics
    # that are never negative; a bar reaching past it is clipped there
    lows = [y - e for _, pts in lines for (_, y, e) in pts]
    bottom: float | None = None
    if ys_all and log_y:
        positive = [v for v in lows if v > 0] + ys_all
        bottom = min(positive) / 1.3
    elif ys_all and min(ys_all) >= 0:
        bottom = 0.0 if min(lows) < 0 else None
    if t.floor is not None and bottom is not None and t.floor.value > 0:
        bottom = min(bottom, t.floor.value / 1.3 if log_y else 0.0)
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    for cfg, pts in lines:
        xs, ys, err = zip(*pts)
        below = [min(e, y - bottom) if bottom is not None else e for y, e in zip(ys, err)]
        yerr = [below, list(err)] if any(err) else None
        ax.errorbar(xs, ys, yerr=yerr, marker="o", markersize=3, capsize=2, label=cfg)
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    # ticks at the swept values only (no 3×10⁰ minor labels)
    ticks = xs_all if numeric else list(range(len(t.columns)))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(ticks, [show(v) for v in ticks] if numeric else [show(c) for c in t.columns])
    if bottom is not None:
        top = max(y + e for _, pts in lines for (_, y, e) in pts)
        ax.set_ylim(bottom, top * (1.3 if log_y else 1.05))
    if log_y:  # plain numbers (200, 30), not 2×10²; minor ticks labelled only over a short range
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(_plain_minor_log_formatter())
    if t.floor is not None:
        label = f"floor {t.floor.value:.3g} (held-out real data)"
        ax.axhline(t.floor.value, color="0.3", linestyle="--", linewidth=1, label=label)
    ax.set_xlabel(x_label(t))
    better = "lower is better" if t.better == "lower" else "higher is better"
    ax.set_ylabel(f"{metric_name(t)}, {better}", fontsize=9)
    title = f"{t.model + ': ' if t.model else ''}{t.metric} vs {'NFE' if t.x == NFE else t.x}"
    n_all = t.n_all or t.n
    detail = f"n = {n_all}" if n_all else ""
    if t.infinite_n:
        detail = "estimate at infinite n (jackknife bias-corrected)"
    if t.blocks and t.blocks > 1:
        detail += f"; bars: 95% jackknife interval over {t.blocks} blocks"
    ax.set_title(title + (f"\n{detail}" if detail else ""), fontsize=9)
    if lines:
        ax.legend(fontsize=7)
    ax.grid(True, which="major", alpha=0.3)
    caption = _caption(t)
    if caption:
        fig.text(0.01, 0.01, caption, fontsize=6.5, wrap=True, va="bottom", ha="left")
        fig.tight_layout(rect=(0, 0.1, 1, 1))
    else:
        fig.tight_layout()
    return fig


def _caption(t: Table) -> str:
    parts = []
    if t.floor is not None:
        parts.append(
            f"Dashed: floor = {t.metric} of {t.floor.n} {t.floor.what} (never trained on) against the same reference"
            + (f", mean of {t.floor.draws} subsets" if t.floor.draws > 1 else "")
            + "; values near or below it are as good as real data by this metric."
        )
    if t.footnotes:
        parts.append(" ".join(f"[{k}] {text}" for k, text in enumerate(t.footnotes, 1)))
    return " ".join(parts)


def plot_table(t: Table, stem: str | os.PathLike, *, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """Write STEM.png and STEM.svg of figure(t)."""
    plt = _pyplot()
    fig = figure(t)
    out = []
    base = Path(stem)
    base.parent.mkdir(parents=True, exist_ok=True)
    try:
        for fmt in formats:
            p = base.with_name(base.name + f".{fmt}")
            fig.savefig(p, format=fmt)
            out.append(p)
    finally:
        plt.close(fig)
    return out
