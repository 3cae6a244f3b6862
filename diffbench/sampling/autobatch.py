"""--batch auto: the largest batch that fits the device, found by halving on out-of-memory (issue 24, "One GPU").

Every seed has its own random stream (REFERENCE §1), so a batch split in two gives the same images as the
whole batch (up to kernels whose float order depends on the batch size): halving never loses or repeats a
seed, it only re-runs the batch that did not fit, in halves, in seed order. The size that fitted is remembered
per model, device and dtypes in a small JSON file in the cache (`<cache>/batch-sizes.json`, the cache of
models/fetch.py), so the next run starts there instead of searching again.

On CPU there is no out-of-memory to search against (the machine swaps first): `--batch auto` is 64 there, and
says so in one line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from diffbench.errors import ConfigError, DiffbenchError

AUTO = "auto"
CPU_BATCH = 64  # --batch auto off CUDA (the default batch of every command)
CUDA_START = 4096  # the first size tried on CUDA when nothing is remembered
CACHE_FILE = "batch-sizes.json"


def parse_batch(value: Any, flag: str = "--batch") -> int | str:
    """'auto' or a positive integer (a TOML setting may give an int); one ConfigError line otherwise."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        n = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        n = None
    if n is None or n < 1:
        raise ConfigError(f"{flag} must be a positive integer or auto, got '{value}'")
    return n


def describe(fit: BatchFit, device: torch.device) -> str:
    """The one line --batch auto prints: the size it starts with and why."""
    if device.type != "cuda":
        return f"--batch auto on {device.type}: batch {fit.size} (no out-of-memory search off CUDA)"
    return f"--batch auto on {device}: starting at batch {fit.size}, halved on out-of-memory ({fit.cache})"


def _cache_path() -> Path | None:
    from diffbench.models.fetch import cache_dir

    try:
        return cache_dir() / CACHE_FILE
    except DiffbenchError:
        return None


def fit_key(model_sha256: str, device: torch.device, spec: Any, shape: Sequence[int]) -> str:
    """What the size that fits depends on: the model file, the device model and memory, the dtypes, the shape."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev = f"{props.name}/{props.total_memory}"
    else:
        dev = device.type
    net = getattr(spec, "net_dtype", None) or "native"
    guided = "guided" if getattr(spec, "guidance", None) is not None else "plain"
    comp = "compiled" if getattr(spec, "compile", None) else "eager"
    shape_s = "x".join(map(str, shape))
    return f"{model_sha256}|{dev}|{spec.dtype}|{net}|{comp}|{guided}|{shape_s}"


class BatchFit:
    """The batch size that fits: starts at `size`, halves on out-of-memory, remembers what fitted under `key`.

    `run(fn, seeds, class_labels)` calls fn(seeds_part, class_labels=labels_part) -> Batch on parts of at most
    `size` seeds, in order, and returns them joined into one Batch; on torch.cuda.OutOfMemoryError the part that
    failed is re-run in halves (a failed call leaves nothing behind: a batch is only kept once finished).
    Raises DiffbenchError when even one image does not fit.
    """

    def __init__(self, size: int, *, key: str | None = None, cache: Path | None = None, remember: bool = True):
        self.size = int(size)
        self.key, self.cache, self.remember = key, cache, remember
        self.halvings = 0

    @classmethod
    def auto(cls, key: str, device: torch.device, *, n_seeds: int) -> BatchFit:
        """The starting size on `device`: remembered for `key`, else CUDA_START (never above the seeds asked)."""
        cache = _cache_path()
        start = _read(cache).get(key, CUDA_START) if device.type == "cuda" else CPU_BATCH
        return cls(max(1, min(int(start), n_seeds)), key=key, cache=cache, remember=device.type == "cuda")

    def run(self, fn: Callable[..., Any], seeds: Sequence[int], class_labels: torch.Tensor | None = None) -> Any:
        parts: list[Any] = []
        i = 0
        while i < len(seeds):
            n = min(self.size, len(seeds) - i)
            labels = None if class_labels is None else class_labels[i : i + n]
            try:
                parts.append(fn(list(seeds[i : i + n]), class_labels=labels))
            except torch.cuda.OutOfMemoryError:
                if n == 1:
                    raise DiffbenchError(
                        "out of GPU memory at batch 1: the model does not fit this device (try --net-dtype bf16)"
                    ) from None
                self.size = n // 2
                self.halvings += 1
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            i += n
        if self.remember and self.key is not None:
            self._save()
        return parts[0] if len(parts) == 1 else join(parts)

    def _save(self) -> None:
        if self.cache is None or self.key is None:
            return
        data = _read(self.cache)
        if data.get(self.key) == self.size:
            return
        data[str(self.key)] = self.size
        try:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache.with_name(f".{self.cache.name}.{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.cache)
        except OSError:
            pass  # a read-only cache only costs the search next time


def _read(path: Path | None) -> dict[str, int]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items() if isinstance(v, int) and v >= 1} if isinstance(data, dict) else {}


def join(parts: list[Any]) -> Any:
    """Batches of consecutive seeds as one Batch (images, seeds and labels concatenated; NFE and counts equal)."""
    from diffbench.sampling.run import Batch

    labels = [p.class_labels for p in parts]
    return Batch(
        images=torch.cat([p.images for p in parts]),
        seeds=[s for p in parts for s in p.seeds],
        class_labels=None if labels[0] is None else torch.cat(labels),
        nfe=parts[0].nfe,
        counts=dict(parts[0].counts),
    )
