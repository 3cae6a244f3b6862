"""Image sinks: quantize once (EDM's rule), then a PNG folder, an npz file, a grid, and the JSON sidecar."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffbench.errors import ConfigError, OutputExistsError


def quantize(images: torch.Tensor) -> torch.Tensor:
    """uint8 = clip(x * 127.5 + 128, 0, 255) truncated, NCHW (EDM generate.py; REFERENCE §1)."""
    return (images.to(torch.float64) * 127.5 + 128).clip(0, 255).to(torch.uint8).cpu()


def _check_image_shaped(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(
            f"samples of shape {tuple(images.shape[1:])} are not images with 1 or 3 channels; "
            "use the Python API or an .npz of another model"
        )


def _to_pil(img: np.ndarray):
    from PIL import Image

    return Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img, "L" if img.shape[2] == 1 else "RGB")


def sidecar_path(out: Path) -> Path:
    """The JSON sidecar beside the output: DIR/diffbench.json or FILE.json."""
    return out / "diffbench.json" if out.suffix != ".npz" else out.with_suffix(".json")


def check_output(out: Path, *, overwrite: bool) -> None:
    """Refuse an existing output (non-empty folder or file) unless overwrite is set."""
    exists = out.is_file() or (out.is_dir() and any(out.iterdir())) or sidecar_path(out).exists()
    if out.suffix == ".npz" and out.is_dir():
        raise OutputExistsError(f"{out} is a folder; an .npz output must be a file path")
    if exists and not overwrite:
        raise OutputExistsError(f"output {out} already exists; pass --overwrite to replace it")


def _plain(value: Any) -> Any:
    """JSON-safe: non-finite floats become strings ('inf'), tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write strict JSON atomically (temp file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_plain(data), indent=2, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)


class ImageSink:
    """Writes batches as they finish: one PNG per seed (named by seed), or one npz at close."""

    def __init__(self, out: Path | str):
        self.out = Path(out)
        self.npz = self.out.suffix == ".npz"
        self.images: list[np.ndarray] = []
        self.seeds: list[int] = []
        self.labels: list[np.ndarray] = []
        if self.npz:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        else:
            self.out.mkdir(parents=True, exist_ok=True)

    def write(self, images: torch.Tensor, seeds: list[int], labels: torch.Tensor | None) -> None:
        _check_image_shaped(images)
        nhwc = quantize(images).permute(0, 2, 3, 1).numpy()
        if self.npz:
            self.images.append(nhwc)
        else:
            for img, seed in zip(nhwc, seeds):
                path = self.out / f"{seed:06d}.png"
                tmp = path.with_name(path.name + ".tmp")
                _to_pil(img).save(tmp, format="PNG")
                os.replace(tmp, path)
        self.seeds.extend(seeds)
        if labels is not None:
            self.labels.append(labels.numpy().astype(np.int64))

    def close(self, provenance: dict[str, Any], *, complete: bool, error: str | None = None) -> None:
        """Finish the npz (with what finished, if the run failed) and write the sidecar."""
        if self.npz and self.images:
            tmp = self.out.with_name(self.out.name + ".tmp.npz")
            np.savez(
                tmp,
                images=np.concatenate(self.images),
                seeds=np.asarray(self.seeds, dtype=np.int64),
                labels=np.concatenate(self.labels) if self.labels else np.zeros(0, dtype=np.int64),
            )
            os.replace(tmp, self.out)
        record = dict(provenance, complete=complete, images_written=len(self.seeds))
        if error is not None:
            record["error"] = error
        write_json(sidecar_path(self.out), record)


def grid_image(images: torch.Tensor, *, columns: int | None = None):
    """A PIL image of all samples (float in [-1, 1], or already quantized uint8) in a near-square grid."""
    _check_image_shaped(images)
    u8 = (images if images.dtype == torch.uint8 else quantize(images)).permute(0, 2, 3, 1).numpy()
    n, h, w, c = u8.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        canvas[r * h : (r + 1) * h, q * w : (q + 1) * w] = u8[k]
    return _to_pil(canvas)
