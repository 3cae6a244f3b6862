"""Files shipped inside the package: the trained digits models, the digits classifier, data and statistics.

checkpoints.toml names them with `url = "builtin:FILE"` (FILE in this folder) and their sha256; the registry
resolves such an entry here instead of downloading it, verifies the hash, and loads the file through the
same loaders as any other checkpoint (the state-dict loader with the entry's network/precond fields).
Everything here was produced by benchmarks/train_digits.py (see train_record.json for its run).

The data file holds scikit-learn's bundled copy of the UCI "Optical Recognition of Handwritten Digits"
test set (Alpaydin & Kaynak 1998; CC BY 4.0): 1,797 8x8 images as uint8, their labels and the fixed split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from diffbench.errors import ModelLoadError

if TYPE_CHECKING:
    from diffbench.models.registry import CheckpointEntry, Fetched, FileStatus

SCHEME = "builtin:"
DATA_FILE = "digits-data.npz"


def is_builtin_url(url: str) -> bool:
    """True for an entry whose file ships with the package (url 'builtin:FILE')."""
    return str(url).startswith(SCHEME)


def builtin_dir() -> Path:
    """The folder of the shipped files."""
    return Path(__file__).resolve().parent


def builtin_path(url: str) -> Path:
    """The shipped file a 'builtin:FILE' url names."""
    name = str(url)[len(SCHEME) :]
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ModelLoadError(f"'{url}' does not name a file shipped with diffbench")
    return builtin_dir() / name


def _check(entry: CheckpointEntry) -> tuple[Path, str]:
    """(path, sha256) of an entry's shipped file after checking it against the registry's sha256."""
    from diffbench.models.fetch import sha256_file

    path = builtin_path(entry.url)
    if not path.is_file():
        raise ModelLoadError(
            f"{entry.name}: the shipped file {path.name} is missing from {path.parent}; reinstall diffbench"
        )
    digest = sha256_file(path)
    want = entry.sha256.get(path.name) or next(iter(entry.sha256.values()), None)
    if want is None:
        raise ModelLoadError(f"{entry.name}: checkpoints.toml gives no sha256 for the shipped file {path.name}")
    if digest != want:
        raise ModelLoadError(
            f"{entry.name}: shipped file {path} is corrupted (sha256 {digest[:16]}…, checkpoints.toml says "
            f"{want[:16]}…); reinstall diffbench"
        )
    return path, digest


def fetch_builtin(entry: CheckpointEntry) -> Fetched:
    """The registry's fetch for a shipped entry: nothing is downloaded; the file's sha256 is verified."""
    from diffbench.models.fetch import FetchResult
    from diffbench.models.registry import Fetched

    path, digest = _check(entry)
    res = FetchResult(
        path=path,
        url=entry.url,
        sha256=digest,
        size=path.stat().st_size,
        downloaded=False,
        recorded=False,
        source="published",
    )
    return Fetched(path, digest, (res,))


def verify_builtin(entry: CheckpointEntry) -> list[FileStatus]:
    """`checkpoints verify` for a shipped entry: ok, or mismatch/missing with the one-line reason."""
    from diffbench.models.registry import FileStatus

    name = builtin_path(entry.url).name
    try:
        _, digest = _check(entry)
    except ModelLoadError as exc:
        status = "missing" if not builtin_path(entry.url).is_file() else "mismatch"
        return [FileStatus(entry.name, name, status, str(exc))]
    return [FileStatus(entry.name, name, "ok", f"sha256 {digest} (shipped)")]


@dataclass(frozen=True)
class DigitsData:
    """The digits as uint8 [N, 1, 8, 8] (0..255, quantized exactly as samples are), labels and the split."""

    images: np.ndarray
    labels: np.ndarray
    train: np.ndarray  # indices of the training split (1,500)
    heldout: np.ndarray  # indices of the held-out split (297)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of 'train', 'heldout' or 'all'."""
        if name == "all":
            return self.images, self.labels
        if name not in ("train", "heldout"):
            from diffbench.errors import UnknownNameError

            raise UnknownNameError("digits split", name, ("train", "heldout", "all"))
        idx = getattr(self, name)
        return self.images[idx], self.labels[idx]


def digits_data() -> DigitsData:
    """The shipped digits (sha256 verified against its checkpoints.toml entry `digits-data`)."""
    from diffbench.models.registry import get_entry

    path, _ = _check(get_entry("digits-data"))
    with np.load(path) as z:
        return DigitsData(images=z["images"], labels=z["labels"], train=z["train"], heldout=z["heldout"])
