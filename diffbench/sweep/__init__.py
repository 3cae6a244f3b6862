"""Sweeps: a grid of sampler specs, one cell at a time, into a resumable store; tables, plots and compare.

The cell runner (diffbench.sweep.cell) is the one place that samples a spec and feeds the metrics; both
`diffbench fid --model` and `diffbench sweep` go through it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "make_grid",
    "load_config",
    "prepare",
    "run_cell",
    "run_sweep",
    "reference_error",
    "fid_result",
    "Store",
    "open_store",
    "load_cells",
    "METRICS",
    "default_metrics",
    "DEFAULT_MODEL",
    "DEFAULT_GRID",
    "default_model",
    "default_setup",
]

_WHERE = {
    "make_grid": "grid",
    "load_config": "grid",
    "prepare": "bench",
    "run_cell": "cell",
    "reference_error": "single_cell",
    "fid_result": "single_cell",
    "METRICS": "bench",
    "default_metrics": "bench",
    "run_sweep": "runner",
    "Store": "store",
    "open_store": "store",
    "load_cells": "store",
}

# The built-in model a sweep runs on when none is named: the one place that chooses it. digits-edm is
# diffbench's own trained EDM model (8x8 digits, shipped in the package), scored as fd in the `digits`
# feature space against its registry statistics; `gmm` (exact metrics) is the analytic alternative.
DEFAULT_MODEL = "digits-edm"


# README's main command (`diffbench sweep` with no MODEL): three solvers at NFE 3-35 on the trained digits
# model, 594 seeds (twice the held-out split's 297) in the default seed blocks (22 of 27, about 20 and a
# divisor of 594: the jackknife of the FD of all 594, issue 20), tables and plots written to
# diffbench-sweep/. Heun reaches only odd NFE (2N - 1).
DEFAULT_GRID: dict[str, list[Any]] = {"solver": ["euler", "heun", "dpmpp-2m"], "nfe": [3, 5, 9, 15, 35]}
DEFAULT_RUN: dict[str, Any] = {"seeds": "0-593", "out": "diffbench-sweep"}


def default_model() -> str:
    """The model `diffbench sweep` uses without a MODEL argument."""
    return DEFAULT_MODEL


def default_setup(model: str | None) -> dict[str, Any]:
    """With no MODEL named: the default grid (solver and NFE axes), seeds, blocks and output folder; the
    user's own values win over each. With a MODEL named: nothing (the command's plain defaults)."""
    return {} if model is not None else {**DEFAULT_RUN, "axes": dict(DEFAULT_GRID)}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"diffbench.sweep.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'diffbench.sweep' has no attribute '{name}'")
