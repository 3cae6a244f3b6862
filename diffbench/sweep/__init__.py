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
    "default_model",
]

_WHERE = {
    "make_grid": "grid",
    "load_config": "grid",
    "prepare": "cell",
    "run_cell": "cell",
    "reference_error": "cell",
    "fid_result": "cell",
    "METRICS": "cell",
    "default_metrics": "cell",
    "run_sweep": "runner",
    "Store": "store",
    "open_store": "store",
    "load_cells": "store",
}

# The built-in model a sweep runs on when none is named: the one place that chooses it. digits-edm is
# diffbench's own trained EDM model (8x8 digits, shipped in the package), scored as fd in the `digits`
# feature space against its registry statistics; `gmm` (exact metrics) is the analytic alternative.
DEFAULT_MODEL = "digits-edm"


def default_model() -> str:
    """The model `diffbench sweep` uses without a MODEL argument."""
    return DEFAULT_MODEL


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"diffbench.sweep.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'diffbench.sweep' has no attribute '{name}'")
