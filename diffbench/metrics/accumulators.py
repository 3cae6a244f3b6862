"""Per-block metric accumulators: fed batch by batch, merged over blocks, checkpointed as plain arrays.

Every accumulator folds batches in seed order on the CPU in float64, so a cell resumed from a checkpoint
performs the same floating-point operations in the same order as an uninterrupted one: identical numbers.
State round-trips through `state()` / `load()` as named numpy arrays (stored with np.savez, no pickle).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch

from diffbench.metrics.moments import Moments, empty_moments, merge, moments_of


class MomentsAcc:
    """Float64 moments of a vector per sample (features, or flattened samples for the exact metrics)."""

    def __init__(self, dim: int):
        self.m: Moments = empty_moments(dim)
        self.fixed: tuple[np.ndarray, np.ndarray] | None = None  # (mu, sigma) as read from a statistics file

    @classmethod
    def of_statistics(cls, mu: np.ndarray, sigma: np.ndarray) -> MomentsAcc:
        """One block given by its statistics (mu, sigma) instead of samples; not mergeable or resumable."""
        acc = cls(int(mu.shape[0]))
        acc.fixed = (mu, sigma)
        return acc

    def add(self, x: torch.Tensor) -> None:
        self.m = merge(self.m, moments_of(x.detach().to(torch.float64).cpu().flatten(1)))

    def state(self) -> dict[str, np.ndarray]:
        if self.fixed is not None:
            raise ValueError("moments given as statistics have no checkpointable state")
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
    """Sum of per-sample squared errors, their count, the largest per-sample RMS and cache hits (ref-error)."""

    def __init__(self) -> None:
        self.sq_sum = 0.0
        self.count = 0
        self.max_rms = 0.0
        self.cached = 0

    def add(self, per_sample_mse: torch.Tensor, cached: bool) -> None:
        per = per_sample_mse.to(torch.float64)
        self.sq_sum += float(per.sum())
        self.count += per.numel()
        self.max_rms = max(self.max_rms, float(per.max().sqrt()))
        self.cached += per.numel() if cached else 0

    @property
    def rms(self) -> float:
        return math.sqrt(self.sq_sum / self.count) if self.count else math.nan

    def state(self) -> dict[str, np.ndarray]:
        return {
            "sq_sum": np.asarray(self.sq_sum, dtype=np.float64),
            "count": np.asarray(self.count, dtype=np.int64),
            "max_rms": np.asarray(self.max_rms, dtype=np.float64),
            "cached": np.asarray(self.cached, dtype=np.int64),
        }

    def load(self, s: dict[str, np.ndarray]) -> None:
        self.sq_sum, self.count = float(s["sq_sum"]), int(s["count"])
        self.max_rms, self.cached = float(s["max_rms"]), int(s["cached"])


def merge_sums(accs: list[SumsAcc]) -> SumsAcc:
    """The sums of the union of blocks: totals added, the largest per-sample RMS kept."""
    out = SumsAcc()
    out.sq_sum = sum(a.sq_sum for a in accs)  # in block order, as the checkpointed sums were added
    out.count = sum(a.count for a in accs)
    out.max_rms = max(a.max_rms for a in accs)
    out.cached = sum(a.cached for a in accs)
    return out


def merge_rows(accs: list[RowsAcc]) -> np.ndarray:
    """Rows of the union of blocks, in block order."""
    return np.concatenate([a.rows() for a in accs])


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
    np.savez(buf, **flat)  # type: ignore[arg-type]  # numpy's stub reads **kwds as allow_pickle
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
