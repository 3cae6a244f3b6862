"""diffbench: which sampler gives the best images for a given number of network evaluations?"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "sample", "fid", "Samples", "SamplerSpec", "__version__"]


def load(spec: Any, *, device: str = "cpu", offline: bool = False) -> Any:
    """A Denoiser from a built-in name (gmm, ideal, ...), a registry name, a path or a URL."""
    from diffbench.models.load import load as _load

    return _load(spec, device=device, offline=offline)


def __getattr__(name: str) -> Any:
    if name in ("sample", "Samples", "iter_batches"):
        from diffbench.sampling import run

        return getattr(run, name)
    if name == "fid":
        from diffbench.metrics import fid

        return fid
    if name == "SamplerSpec":
        from diffbench.sampling.spec import SamplerSpec

        return SamplerSpec
    raise AttributeError(f"module 'diffbench' has no attribute '{name}'")
