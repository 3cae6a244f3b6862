"""The command side of a torchrun launch: join the ranks, compare their commands, load the model once per node.

Used by `diffbench sweep` (and any command that runs cells through diffbench.sweep): outside a launch every
helper here is the plain one-process path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from diffbench.distributed import World, load_on_ranks, world


def _fingerprint(config: Path | None) -> dict[str, Any]:
    """What must be equal on every rank: the arguments, the config file's bytes, the versions."""
    import torch

    from diffbench import __version__
    from diffbench.cli.app import COMMAND

    conf = None
    if config is not None and Path(config).is_file():
        conf = hashlib.sha256(Path(config).read_bytes()).hexdigest()
    return {
        "arguments": list(COMMAND),
        "config file sha256": conf,
        "diffbench": __version__,
        "torch": torch.__version__,
    }


def _difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    for k in a:
        if a[k] != b.get(k):
            if k == "arguments":
                return f"arguments '{' '.join(a[k])}' vs '{' '.join(b[k])}'"
            return f"{k} {a[k]} vs {b.get(k)}"
    return "their settings"


def join(config: Path | None = None) -> World:
    """This process's world; in a launch, refused (one line, every rank) unless every rank was given the same
    command, config file and versions. Nothing has been read or written yet when this returns."""
    w = world()
    w.agree("the command", _fingerprint(config), describe=_difference)
    return w


def rank_device(device: str, w: World) -> str:
    """One GPU per rank: 'auto' or 'cuda' become cuda:LOCAL_RANK in a launch on a machine with CUDA."""
    if w.size > 1 and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{w.local_rank}"
    return device


__all__ = ["join", "rank_device", "load_on_ranks"]
