"""Provenance of a result: versions, device, dtype, TF32, checkpoint hash, spec, grid, counted NFE (DESIGN.md)."""

from __future__ import annotations

import datetime
import platform
from typing import Any

import torch


def environment(device: torch.device) -> dict[str, Any]:
    """Software and hardware facts that can change a number."""
    from diffbench import __version__

    env: dict[str, Any] = {
        "diffbench": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": str(device),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":  # TF32 only exists on CUDA: never claim it for a CPU run
        env["gpu"] = torch.cuda.get_device_name(device)
        env["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
        env["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
    return env


def model_info(denoiser: Any) -> dict[str, Any]:
    """What identifies the model: its spec or source (with sha256 when it came from a file)."""
    info: dict[str, Any] = {"class": type(denoiser).__name__}
    for attr in ("spec", "source_info"):
        value = getattr(denoiser, attr, None)
        if value is not None:
            info[attr] = value
    for attr in ("sigma_min", "sigma_max", "img_channels", "img_resolution", "label_dim"):
        info[attr] = getattr(denoiser, attr, None)
    return info


def compact_seeds(seeds: list[int]) -> str:
    """0,1,2,3,7 -> '0-3,7'."""
    parts: list[str] = []
    i = 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(parts)
