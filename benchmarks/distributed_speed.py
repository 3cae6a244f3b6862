"""One cell across processes and many cells across shards, on this machine's CPUs.

A. `torchrun --nproc-per-node 2 -m diffbench sweep` (gloo, one torch thread per rank) against one process
   (one thread; with --threads also as many threads as ranks) on the same cells of the built-in digits model:
   wall time of the whole command, the cells' own wall time from the store, and whether the results are
   bit-identical.
B. The same grid run whole and as 3 shards (one after the other, as 3 machines would run them at once) plus
   `diffbench merge`: the work each shard repeats (start-up, model, grid) and the merge's own cost, and whether
   the merged export equals the whole one. Also the merge's cost for 3 stores of 200 cells each.

Run: python benchmarks/distributed_speed.py [--seeds 0-127] [--nfe 9,35] [--threads]
Results go to stdout as a small table (benchmarks/README.md keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's diffbench, also for the in-process merge below


def _env(threads: int) -> dict[str, str]:
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = e["MKL_NUM_THREADS"] = str(threads)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return time.perf_counter() - t, p.stdout


def _cells_wall(store: Path) -> float:
    con = sqlite3.connect(store)
    try:
        return float(con.execute("SELECT sum(wall_s) FROM cells WHERE status='done'").fetchone()[0] or 0.0)
    finally:
        con.close()


def _results(stdout: str) -> list[dict]:
    return [r["results"] for r in json.loads(stdout)]


def ranks_vs_one(work: Path, args: list[str], ranks: int = 2, *, threads_variant: bool = False) -> None:
    py = [sys.executable, "-m", "diffbench"]
    rows = []
    base = None
    variants = [("1 process, 1 thread", py, 1)]
    if threads_variant:  # off by default: on a shared, oversubscribed machine an OpenMP team spins for minutes
        variants.append((f"1 process, {ranks} threads", py, ranks))
    for label, cmd, threads in [
        *variants,
        (
            f"torchrun {ranks} ranks x 1 thread (gloo)",
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks)]
            + ["--master-port", str(_port()), "-m", "diffbench"],
            1,
        ),
    ]:
        store = work / f"a{len(rows)}.db"
        wall, out = _run([*cmd, *args, "--store", str(store), "--json"], _env(threads), work)
        res = _results(out)
        base = base if base is not None else res
        rows.append((label, wall, _cells_wall(store), res == base))
        print(f"  ({label}: {wall:.1f} s)", flush=True)
    print(f"\nA. one cell across processes: diffbench sweep {' '.join(args[1:])}")
    print("| run | command wall s | cells wall s | results equal to 1 process |")
    print("|---|---:|---:|---|")
    for label, wall, cells, same in rows:
        print(f"| {label} | {wall:.1f} | {cells:.1f} | {'bit-identical' if same else 'DIFFER'} |", flush=True)


def shards_vs_whole(work: Path, args: list[str], n: int = 3) -> None:
    py = [sys.executable, "-m", "diffbench"]
    env = _env(1)
    whole_wall, _ = _run([*py, *args, "--store", "whole.db", "--out", "whole", "--no-plot"], env, work)
    shard_walls = []
    for i in range(n):
        w, _ = _run([*py, *args, "--store", f"s{i}.db", "--shard", f"{i}/{n}"], env, work)
        shard_walls.append(w)
    merge_wall, _ = _run([*py, "merge", *[f"s{i}.db" for i in range(n)], "-o", "all.db"], env, work)
    _run([*py, "report", "all.db", "--out", "merged", "--no-plot"], env, work)
    a = json.loads((work / "whole" / "results.json").read_text())["cells"]
    b = json.loads((work / "merged" / "results.json").read_text())["cells"]
    same = [(c["id"], c["results"]) for c in a] == [(c["id"], c["results"]) for c in b]
    cells = [_cells_wall(work / f"s{i}.db") for i in range(n)]
    print(f"\nB. the grid whole and as {n} shards + merge: diffbench sweep {' '.join(args[1:])}")
    print("| run | command wall s | cells wall s |")
    print("|---|---:|---:|")
    print(f"| whole grid, 1 process | {whole_wall:.1f} | {_cells_wall(work / 'whole.db'):.1f} |")
    for i in range(n):
        print(f"| shard {i}/{n} | {shard_walls[i]:.1f} | {cells[i]:.1f} |")
    print(f"| merge of the {n} stores (command) | {merge_wall:.1f} | |")
    repeated = sum(shard_walls) - sum(cells) - (whole_wall - _cells_wall(work / "whole.db"))
    print(f"work each shard repeats (start-up, model, grid): {repeated / max(n - 1, 1):.1f} s per extra shard")
    print(f"merged export equals the whole grid's (ids and results): {same}")


def merge_cost(work: Path, cells: int = 200, n: int = 3) -> None:
    from diffbench.sweep.merge import merge_stores
    from diffbench.sweep.store import Store

    results = {"fd": {"value": 1.0, "blocks": [1.0] * 20, "loo": [1.0] * 20}}
    paths = []
    for s in range(n):
        p = work / f"m{s}.db"
        with Store(p) as st:
            for c in range(cells):
                cid = f"{s:02d}{c:062x}"
                st.begin(cid, position=s * cells + c, info={"config": f"c{c}"}, identity={"files_read": {"model": "x"}})
                st.finish(cid, nfe=9, results=results, provenance={"x": c}, wall_s=1.0, images_per_s=1.0, n_done=1)
        paths.append(p)
    t = time.perf_counter()
    merge_stores(paths, work / "m-all.db")
    print(f"\nmerge_stores of {n} stores x {cells} cells (in-process): {time.perf_counter() - t:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0-127")
    ap.add_argument("--nfe", default="9,35")
    ap.add_argument("--batch", default="32")
    ap.add_argument("--threads", action="store_true", help="also 1 process with 2 threads (an idle machine only)")
    a = ap.parse_args()
    import torch

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}; Python {platform.python_version()}, torch {torch.__version__}"
    )
    sweep = ["sweep", "digits-edm", "--solver", "heun", "--nfe", a.nfe, "--seeds", a.seeds, "--batch", a.batch]
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        ranks_vs_one(work, sweep, threads_variant=a.threads)
        grid = ["sweep", "digits-edm", "--solver", "euler,heun,dpmpp-2m", "--nfe", "5,9", "--seeds", "0-175"]
        shards_vs_whole(work, [*grid, "--batch", a.batch])
        merge_cost(work)


if __name__ == "__main__":
    main()
