"""Format checks a downloaded file must pass before the cache keeps it and the lock file pins its hash.

Each check reads the whole file once and raises ModelLoadError (one line) when the file is not what its kind
says: an HTML error page, a file cut short, another format. They check structure only; nothing in the file
is run or unpickled (EDM pickles are scanned opcode by opcode, never loaded here).
"""

from __future__ import annotations

import json
import pickletools
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

from diffbench.errors import ModelLoadError

Check = Callable[[Path], None]

# the first bytes torch.save wrote before its zip format (pickled magic number 0x1950a86a20f9469cfc6c)
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
TRUNCATED = "it ends early (the download was cut short)"


def describe_start(head: bytes) -> str:
    """What a file that is not the expected binary looks like, from its first bytes."""
    low = head.lower().lstrip()
    if low.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in low:
        return "an HTML or XML page (a server error or login page?)"
    if not head:
        return "empty"
    if head.startswith(b"PK"):
        return "a zip archive"
    if head[:1] in (b"{", b"[") or all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file"
    return f"a file starting with {head[:8]!r}"


def _head(path: Path, n: int = 64) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def check_edm_pickle(path: Path) -> None:
    """A complete pickle stream (protocol 2+) that ends with STOP at the last byte; nothing is unpickled."""
    head = _head(path)
    if not head.startswith(b"\x80") or len(head) < 2 or head[1] < 2:
        raise ModelLoadError(f"not an EDM pickle: it is {describe_start(head)}")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            last = None
            for op, _, _ in pickletools.genops(f):
                last = op.name
            end = f.tell()
    except (ValueError, EOFError, struct.error) as exc:
        text = str(exc)
        if any(w in text for w in ("exhausted", "truncated", "not enough", "expected", "but only")):
            raise ModelLoadError(f"not a complete EDM pickle: {TRUNCATED}") from None
        raise ModelLoadError(
            f"not a readable pickle stream ({text.splitlines()[0] if text else 'malformed'})"
        ) from None
    if last != "STOP":
        raise ModelLoadError(f"not a complete EDM pickle: {TRUNCATED}")
    if end != size:
        raise ModelLoadError(f"not an EDM pickle: {size - end} bytes follow the end of the pickle stream")


def _check_zip(path: Path, what: str) -> zipfile.ZipFile:
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError):
        raise ModelLoadError(f"not a complete {what}: the zip archive has no directory ({TRUNCATED}?)") from None
    try:
        bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, ValueError) as exc:
        z.close()
        raise ModelLoadError(f"not a complete {what}: {exc}") from None
    if bad is not None:
        z.close()
        raise ModelLoadError(f"not a complete {what}: member {bad} fails its CRC check")
    return z


def check_safetensors(path: Path) -> None:
    """safetensors: 8-byte header length, a JSON header, and tensors that exactly fill the rest of the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ModelLoadError(f"not a safetensors file: {TRUNCATED}")
        n = int.from_bytes(raw, "little")
        if n > min(size - 8, 100 << 20):
            raise ModelLoadError(f"not a safetensors file: its header claims {n} bytes of a {size}-byte file")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ModelLoadError("not a safetensors file: the header is not JSON") from None
    if not isinstance(header, dict):
        raise ModelLoadError("not a safetensors file: the header is not a JSON object")
    end = 0
    for key, t in header.items():
        if key == "__metadata__":
            continue
        offs = t.get("data_offsets") if isinstance(t, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) and o >= 0 for o in offs)):
            raise ModelLoadError(f"not a safetensors file: tensor '{key}' has no valid data_offsets")
        end = max(end, offs[1])
    if 8 + n + end != size:
        what = TRUNCATED if 8 + n + end > size else f"{size - 8 - n - end} stray bytes at the end"
        raise ModelLoadError(f"not a complete safetensors file: {what}")


def check_state_dict(path: Path) -> None:
    """A torch.save file (zip with data.pkl, every member's CRC checked; or the legacy format) or safetensors."""
    head = _head(path)
    if head.startswith(b"PK\x03\x04"):
        with _check_zip(path, "torch checkpoint") as z:
            names = z.namelist()
            if names and all(n.endswith(".npy") for n in names):
                raise ModelLoadError("not a torch checkpoint: it is a NumPy .npz archive (FID statistics?)")
            if not any(n.endswith("data.pkl") for n in names):
                raise ModelLoadError("not a torch checkpoint: the zip archive has no data.pkl")
        return
    if head.startswith(LEGACY_TORCH_MAGIC):
        try:
            import torch

            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure of the load is a bad file
            raise ModelLoadError(f"not a readable torch checkpoint: {type(exc).__name__}") from None
        return
    if len(head) >= 9 and head[8:9] == b"{":
        check_safetensors(path)
        return
    raise ModelLoadError(f"not a torch checkpoint or safetensors file: it is {describe_start(head)}")


def check_fid_stats(path: Path) -> None:
    """An .npz (no pickles) holding mu (d,) and sigma (d, d) as numbers."""
    import numpy as np

    head = _head(path)
    if not head.startswith(b"PK"):
        raise ModelLoadError(f"not an .npz archive of statistics: it is {describe_start(head)}")
    _check_zip(path, ".npz archive").close()
    try:
        with np.load(path, allow_pickle=False) as z:
            if not {"mu", "sigma"} <= set(z.files):
                raise ModelLoadError(
                    f"not FID statistics: it holds {', '.join(z.files) or 'nothing'}, not mu and sigma"
                )
            mu, sigma = z["mu"], z["sigma"]
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - object arrays, bad headers: all a bad file
        raise ModelLoadError(f"not readable FID statistics ({type(exc).__name__}: {exc})") from None
    d = mu.shape[0] if mu.ndim == 1 else -1
    if d < 1 or sigma.shape != (d, d) or mu.dtype.kind not in "fiu" or sigma.dtype.kind not in "fiu":
        raise ModelLoadError(f"not FID statistics: mu {mu.shape} and sigma {sigma.shape} are not (d,) and (d, d)")


def check_json(path: Path) -> None:
    """A JSON object (diffusers config files)."""
    try:
        data = json.loads(path.read_bytes())
    except ValueError:
        raise ModelLoadError(f"not a JSON file: it is {describe_start(_head(path))}") from None
    if not isinstance(data, dict):
        raise ModelLoadError("not a JSON config: it holds no object")


def check_any_model(path: Path) -> None:
    """Any single-file checkpoint format: EDM pickle, torch state dict or safetensors."""
    head = _head(path)
    if head.startswith(b"PK\x03\x04") or head.startswith(LEGACY_TORCH_MAGIC) or head[8:9] == b"{":
        check_state_dict(path)
    elif head.startswith(b"\x80"):
        check_edm_pickle(path)
    else:
        raise ModelLoadError(f"not a checkpoint: it is {describe_start(head)}")


FORMAT_CHECKS: dict[str, Check] = {
    "edm-pickle": check_edm_pickle,
    "state-dict": check_state_dict,
    "fid-stats-npz": check_fid_stats,
}
SUFFIX_CHECKS: dict[str, Check] = {
    ".pkl": check_edm_pickle,
    ".pt": check_state_dict,
    ".pth": check_state_dict,
    ".bin": check_state_dict,
    ".ckpt": check_state_dict,
    ".safetensors": check_safetensors,
    ".npz": check_fid_stats,
    ".json": check_json,
}


def check_for_file(name: str, fmt: str | None = None) -> Check | None:
    """The check for a file of registry format `fmt` (single-file entries), else by the file name's suffix."""
    if fmt in FORMAT_CHECKS:
        return FORMAT_CHECKS[fmt]
    return SUFFIX_CHECKS.get(Path(name).suffix.lower())
