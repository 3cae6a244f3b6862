"""Cost of the format checks a download must pass before it is cached and pinned (diffbench.models.validate).

Writes files of about the size of EDM's CIFAR-10 checkpoints (EDM pickle layout, torch state dict,
safetensors) and of EDM's FID statistics (2048-d npz), then times each check and a sha256 of the same file
(which every download computes anyway). Usage: python benchmarks/format_checks.py [--mb 220]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffbench.models import validate


def _time(fn, path: Path) -> float:
    t = time.perf_counter()
    fn(path)
    return time.perf_counter() - t


def _sha(path: Path) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mb", type=float, default=220.0, help="size of the model files in MB")
    args = ap.parse_args()
    n = int(args.mb * 1e6 / 4)
    tensors = {f"w{i}": torch.randn(n // 64) for i in range(64)}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        files = {}
        files["edm-pickle"] = d / "net.pkl"  # tensors pickled as torch does: storages as byte blobs
        with open(files["edm-pickle"], "wb") as f:
            pickle.dump({"ema": tensors}, f, protocol=4)
        files["state-dict"] = d / "net.pt"
        torch.save(tensors, files["state-dict"])
        files["safetensors"] = d / "net.safetensors"
        header, blobs, off = {}, [], 0
        for k, t in tensors.items():
            b = t.numpy().tobytes()
            header[k] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
            blobs.append(b)
            off += len(b)
        h = json.dumps(header).encode()
        files["safetensors"].write_bytes(len(h).to_bytes(8, "little") + h + b"".join(blobs))
        files["fid-stats-npz"] = d / "ref.npz"
        np.savez(files["fid-stats-npz"], mu=np.zeros(2048), sigma=np.eye(2048))
        checks = {
            "edm-pickle": validate.check_edm_pickle,
            "state-dict": validate.check_state_dict,
            "safetensors": validate.check_safetensors,
            "fid-stats-npz": validate.check_fid_stats,
        }
        print(f"{'format':<14} {'MB':>7} {'check s':>8} {'sha256 s':>9}")
        for kind, path in files.items():
            _time(_sha, path)  # warm the page cache for both
            c, s = _time(checks[kind], path), _time(_sha, path)
            print(f"{kind:<14} {path.stat().st_size / 1e6:7.1f} {c:8.3f} {s:9.3f}")


if __name__ == "__main__":
    main()
