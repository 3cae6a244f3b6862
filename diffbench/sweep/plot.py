"""Metric versus NFE on log axes, one line per configuration, error bars from seed blocks (PNG and SVG)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from diffbench.errors import MissingDependencyError
from diffbench.sweep.report import Table


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError("plots need matplotlib: pip install 'diffbench[plot]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_table(t: Table, stem: str | os.PathLike, *, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """Write STEM.png and STEM.svg; x = NFE actually spent (log), y = metric (log when all values > 0)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    positive = True
    drawn = 0
    for cfg in t.configs:
        pts = []
        for nfe in t.nfes:
            e = t.entry(cfg, nfe)
            if e is None or e.value is None:
                continue
            x = e.nfe_spent if e.nfe_spent is not None else nfe
            hw = e.half_width
            pts.append((x, e.value, 0.0 if hw is None or hw != hw else hw))
        if not pts:
            continue
        pts.sort()
        xs, ys, err = zip(*pts)
        positive = positive and all(y > 0 for y in ys)
        ax.errorbar(xs, ys, yerr=err if any(err) else None, marker="o", markersize=3, capsize=2, label=cfg)
        drawn += 1
    ax.set_xscale("log")
    if positive and drawn:
        ax.set_yscale("log")
    ax.set_xlabel("NFE (network evaluations per sample)")
    better = "lower is better" if t.better == "lower" else "higher is better"
    ax.set_ylabel(f"{t.metric} ({better})")
    if t.blocks and t.blocks > 1:
        ax.set_title(f"{t.metric} vs NFE; bars: 95% interval over {t.blocks} seed blocks", fontsize=9)
    if drawn:
        ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    out = []
    base = Path(stem)
    base.parent.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        p = base.with_name(base.name + f".{fmt}")
        fig.savefig(p, format=fmt)
        out.append(p)
    plt.close(fig)
    return out
