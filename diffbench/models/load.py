"""`diffbench.load`: built-in analytic names first, then checkpoints (registry name, path, URL, entry point)."""

from __future__ import annotations

from typing import Any

from diffbench.denoiser import check_denoiser
from diffbench.errors import UnknownNameError
from diffbench.models.analytic import BUILTIN_NAMES, is_builtin, load_builtin


def load(spec: Any, *, device: str = "cpu", offline: bool = False, progress: Any = None) -> Any:
    """Resolve `spec` to a Denoiser; an object that already is one is returned as it is."""
    if not isinstance(spec, str):
        check_denoiser(spec)
        return spec
    if is_builtin(spec):
        return load_builtin(spec).to(device)
    try:
        from diffbench.models.registry import load_checkpoint
    except ModuleNotFoundError as exc:
        if exc.name != "diffbench.models.registry":
            raise
        raise UnknownNameError("model", spec, BUILTIN_NAMES) from None
    try:
        return load_checkpoint(spec, device=device, offline=offline, progress=progress)
    except UnknownNameError as exc:  # neither a built-in nor a checkpoint: list both
        raise UnknownNameError("model", spec, [*BUILTIN_NAMES, *getattr(exc, "valid", [])]) from None
