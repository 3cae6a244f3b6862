"""Per-block metric accumulators of a cell: fed batch by batch, checkpointed as plain float64 arrays.

Every accumulator folds batches in seed order on the CPU in float64, so a cell resumed from a checkpoint
performs the same floating-point operations in the same order as an uninterrupted one: identical numbers.
State round-trips through `state()` / `load()` as named numpy arrays (stored with np.savez, no pickle).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffbench.metrics.moments import Moments, empty_moments, merge, moments_of


@dataclass
class Chunk:
    """One sampled batch as the accumulators see it."""

    images: torch.Tensor  # float, unclipped, [B, ...] (sampler output)
    seeds: list[int]
    labels: torch.Tensor | None  # integer class indices [B] or None
    uint8: torch.Tensor | None = None  # quantized once (EDM rule), NCHW, CPU
    features: torch.Tensor | None = None  # extractor features [B, D], CPU float64
    logits: torch.Tensor | None = None  # extractor logits [B, K], CPU float32


class MomentsAcc:
    """Float64 moments of a vector per sample (features, or flattened samples for the exact metrics)."""

    def __init__(self, dim: int):
        self.m: Moments = empty_moments(dim)

    def add(self, x: torch.Tensor) -> None:
        self.m = merge(self.m, moments_of(x.detach().to(torch.float64).cpu().flatten(1)))

    def state(self) -> dict[str, np.ndarray]:
        return {"n": np.asarray(self.m.n, dtype=np.int64), "mean": self.m.mean.numpy(), "m2": self.m.m2.numpy()}

    def load(self, s: dict[str, np.ndarray]) -> None:
        self.m = Moments(n=int(s["n"]), mean=torch.from_numpy(s["mean"].copy()), m2=torch.from_numpy(s["m2"].copy()))


class RowsAcc:
    """Rows kept in order (features for KID / P&R, logits for IS, flattened samples for sliced W2)."""

    def __init__(self, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self.parts: list[np.ndarray] = []

    def add(self, x: torch.Tensor) -> None:
        self.parts.append(x.detach().cpu().flatten(1).numpy().astype(self.dtype))

    def rows(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros((0, 0), self.dtype)

    def state(self) -> dict[str, np.ndarray]:
        return {"rows": self.rows()}

    def load(self, s: dict[str, np.ndarray]) -> None:
        rows = s["rows"]
        self.parts = [rows.astype(self.dtype)] if rows.size else []


class SumsAcc:
    """Sum of per-sample squared errors, count, largest per-sample RMS and cache hits (ref-error)."""

    def __init__(self) -> None:
        self.v = np.zeros(4, dtype=np.float64)  # sq_sum, count, max_rms, cached

    def add(self, per_sample_mse: torch.Tensor, cached: bool) -> None:
        per = per_sample_mse.to(torch.float64)
        self.v[0] += float(per.sum())
        self.v[1] += per.numel()
        self.v[2] = max(self.v[2], float(per.max().sqrt()))
        self.v[3] += per.numel() if cached else 0

    @property
    def rms(self) -> float:
        return math.sqrt(self.v[0] / self.v[1]) if self.v[1] else math.nan

    def state(self) -> dict[str, np.ndarray]:
        return {"v": self.v.copy()}

    def load(self, s: dict[str, np.ndarray]) -> None:
        self.v = s["v"].astype(np.float64).copy()


def merge_moments(accs: list[MomentsAcc]) -> Moments:
    """Moments of the union of blocks (Chan et al. 1979 pairwise merge, in block order)."""
    out = accs[0].m
    for a in accs[1:]:
        out = merge(out, a.m)
    return out


def pack(state: dict[str, dict[str, np.ndarray]]) -> bytes:
    """Nested {accumulator: {array name: array}} as one npz blob (no pickle)."""
    flat = {f"{k}/{name}": arr for k, arrays in state.items() for name, arr in arrays.items()}
    buf = io.BytesIO()
    np.savez(buf, **flat)
    return buf.getvalue()


def unpack(blob: bytes) -> dict[str, dict[str, np.ndarray]]:
    """Inverse of pack."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        for key in z.files:
            acc, _, name = key.rpartition("/")
            out.setdefault(acc, {})[name] = z[key]
    return out


def as_float(x: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
