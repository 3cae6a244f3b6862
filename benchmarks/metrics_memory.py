"""Peak memory of streaming feature statistics versus the number of images (diffbench.metrics).

Each measurement runs in a fresh subprocess: an npz of n uint8 images (32x32x3) is streamed through a 2048-d
feature extractor (a fixed random projection, as wide as Inception's pool3) into float64 moments; the peak
resident set size (ru_maxrss) is reported, next to the memory that holding all n features would take.

    python benchmarks/metrics_memory.py --n 1000 4000 16000 64000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch
from diffbench.metrics.sources import open_source
from diffbench.metrics.stats import statistics_of

class Projection:
    id = "random-projection-2048"
    def __init__(self):
        self.w = torch.randn(3 * 32 * 32, 2048, generator=torch.Generator().manual_seed(0))
    def features(self, x):
        return (x.float() / 255).flatten(1) @ self.w

torch.set_num_threads(1)
ext = Projection()
src = open_source(sys.argv[1])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
stats = statistics_of(src, extractor=ext, batch=int(sys.argv[2])) if src.count else None
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": src.count, "base_mb": base / 1024, "peak_mb": peak / 1024, "seconds": dt}))
"""


def write_npz(path: Path, n: int, chunk: int = 4000) -> None:
    """An npz of n random uint8 images [n, 32, 32, 3], written in chunks (npy header, then the data)."""
    import zipfile

    import numpy as np
    from numpy.lib import format as npformat

    rng = np.random.default_rng(0)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf,
        zf.open("images.npy", "w", force_zip64=True) as fp,
    ):
        npformat.write_array_header_1_0(fp, {"descr": "|u1", "fortran_order": False, "shape": (n, 32, 32, 3)})
        for i in range(0, n, chunk):
            fp.write(rng.integers(0, 256, (min(chunk, n - i), 32, 32, 3), dtype=np.uint8).tobytes())


def measure(n: int, batch: int, folder: Path) -> dict:
    path = folder / f"images-{n}.npz"
    write_npz(path, n)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(batch)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    path.unlink()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 4000, 16000, 64000])
    parser.add_argument("--batch", type=int, default=250)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            t = time.perf_counter()
            r = measure(n, args.batch, Path(tmp))
            r["held_features_mb"] = n * 2048 * 4 / 2**20
            rows.append(r)
            print(f"n={n}: done in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    print(
        "| images n | peak RSS (MiB) | RSS before streaming (MiB) | streaming time (s) "
        "| holding all features would add (MiB) |"
    )
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['n']} | {r['peak_mb']:.0f} | {r['base_mb']:.0f} | {r['seconds']:.1f} | {r['held_features_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
