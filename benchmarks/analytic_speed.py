"""`diffbench sample gmm --nfe 35 --seeds 0-63`: its sampling against the cost of importing torch.

Each figure is the median of --repeat fresh subprocesses (on a shared machine single runs scatter):

- import torch: `python -c "import torch"`;
- command: the whole console-script run, writing an npz;
- sampling: diffbench.sample(...) alone, timed inside one process after the model is built, for the
  built-in analytic models (the batch of 64 in one call, as the command runs it).

    python benchmarks/analytic_speed.py --repeat 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLING = r"""
import sys, time
import diffbench
m = diffbench.load(sys.argv[1])
t = time.perf_counter()
diffbench.sample(m, seeds=range(64), nfe=35, device="cpu")
print(time.perf_counter() - t)
"""


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    exe = (
        str(Path(sys.executable).parent / "diffbench")
        if (Path(sys.executable).parent / "diffbench").exists()
        else shutil.which("diffbench")
    )
    med = lambda xs: statistics.median(xs)  # noqa: E731
    imp = med([wall([sys.executable, "-c", "import torch"]) for _ in range(args.repeat)])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.npz"
        cmd = [exe, "sample", "gmm", "--nfe", "35", "--seeds", "0-63", "--out", str(out), "--overwrite"]
        whole = med([wall(cmd) for _ in range(args.repeat)])
    print(
        f"import torch: {imp:.2f} s   `diffbench sample gmm --nfe 35 --seeds 0-63`: {whole:.2f} s "
        f"(medians of {args.repeat})"
    )
    for name in ("gmm", "gmm:cov=diag", "ideal", "gmm:cond=1"):
        runs = [
            float(
                subprocess.run(
                    [sys.executable, "-c", SAMPLING, name], check=True, capture_output=True, text=True
                ).stdout
            )
            for _ in range(args.repeat)
        ]
        print(f"sampling {name:14s} 64 seeds, heun NFE 35: {med(runs):.3f} s")


if __name__ == "__main__":
    main()
