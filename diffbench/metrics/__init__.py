"""Metrics: features -> float64 moments -> Fréchet distance, KID, precision/recall, IS; reference error."""

from __future__ import annotations

from typing import Any

# bound eagerly: the function `fid` must win over the submodule of the same name
from diffbench.metrics.fid import FIDResult, compare_fid, fid

__all__ = [
    "FIDResult",
    "Comparison",
    "fid",
    "compare_fid",
    "frechet_distance",
    "reference_samples",
    "exact_frechet",
    "exact_sliced_wasserstein",
    "sliced_wasserstein",
    "register_extractor",
    "load_extractor",
    "ExtractorInfo",
]

_WHERE = {
    "Comparison": "fid",
    "frechet_distance": "frechet",
    "reference_samples": "reference_error",
    "exact_frechet": "distribution",
    "exact_sliced_wasserstein": "distribution",
    "sliced_wasserstein": "distribution",
    "register_extractor": "extractors",
    "load_extractor": "extractors",
    "ExtractorInfo": "extractors",
}


def __getattr__(name: str) -> Any:
    """Lazy re-exports, so importing one metrics module does not import them all."""
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"diffbench.metrics.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'diffbench.metrics' has no attribute '{name}'")
