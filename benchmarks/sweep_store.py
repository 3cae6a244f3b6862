"""Cost of the sweep's resumability: one checkpoint (accumulators + seed count in one SQLite transaction)
for feature moments of dimension D, and the cell runner's overhead over plain sampling.

Run: python benchmarks/sweep_store.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from diffbench.sweep.accumulators import MomentsAcc, pack
from diffbench.sweep.store import Store


def checkpoint_cost(dim: int, repeats: int = 5) -> tuple[float, int]:
    """Seconds per checkpoint of one block's float64 moments (mean D, M2 DxD) and the blob size in bytes."""
    acc = MomentsAcc(dim)
    acc.add(torch.randn(64, dim))
    with tempfile.TemporaryDirectory() as d, Store(Path(d) / "s.db") as st:
        st.begin("c", position=0, info={"config": "bench"}, identity={})
        blob = pack({"b0.features": acc.state()})
        st.checkpoint("c", 64, blob)
        t = time.perf_counter()
        for i in range(repeats):
            st.checkpoint("c", 64 * (i + 2), pack({"b0.features": acc.state()}))
        return (time.perf_counter() - t) / repeats, len(blob)


def runner_overhead(n: int = 256, batch: int = 64) -> tuple[float, float]:
    """(seconds of plain iter_batches, seconds of run_cell with fd-exact + sw and a checkpoint per batch)."""
    from diffbench.models.analytic import load_builtin
    from diffbench.sampling.run import iter_batches
    from diffbench.sampling.spec import SamplerSpec
    from diffbench.sweep.cell import prepare, run_cell

    model = load_builtin("gmm:shape=1x4x4")
    t = time.perf_counter()
    for _ in iter_batches(model, seeds=range(n), solver="heun", nfe=35, batch=batch, device="cpu"):
        pass
    plain = time.perf_counter() - t
    bench = prepare(model, seeds=range(n), metrics=["fd-exact", "sw"], batch=batch, device="cpu")
    with tempfile.TemporaryDirectory() as d, Store(Path(d) / "s.db") as st:
        st.begin("c", position=0, info={"config": "bench"}, identity={})
        t = time.perf_counter()
        run_cell(bench, SamplerSpec.make(solver="heun", nfe=35), checkpoint=lambda k, s: st.checkpoint("c", k, s))
        cell = time.perf_counter() - t
    return plain, cell


if __name__ == "__main__":
    torch.set_num_threads(1)
    for dim in (192, 2048):
        sec, size = checkpoint_cost(dim)
        print(f"checkpoint of {dim}-d moments: {size / 1e6:.2f} MB, {sec * 1e3:.1f} ms")
    plain, cell = runner_overhead()
    print(
        f"256 samples, heun NFE 35, gmm 1x4x4: iter_batches {plain:.2f} s, "
        f"run_cell (+fd-exact, sw, checkpoints) {cell:.2f} s"
    )
