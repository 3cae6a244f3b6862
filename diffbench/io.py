"""Image sinks: quantize once (EDM's rule), then a PNG folder, an npz file, a grid, and the JSON sidecar."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffbench.errors import ConfigError, OutputExistsError
from diffbench.io_json import dumps_json


def quantize(images: torch.Tensor) -> torch.Tensor:
    """uint8 = clip(x * 127.5 + 128, 0, 255) truncated, NCHW (EDM generate.py; REFERENCE §1)."""
    return (images.to(torch.float64) * 127.5 + 128).clip(0, 255).to(torch.uint8).cpu()


def _check_image_shaped(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(
            f"samples of shape {tuple(images.shape[1:])} are not images with 1 or 3 channels; "
            "use the Python API or an .npz of another model"
        )


def _to_pil(img: np.ndarray):
    from PIL import Image

    return Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img, "L" if img.shape[2] == 1 else "RGB")


def sidecar_path(out: Path) -> Path:
    """The JSON sidecar beside the output: DIR/diffbench.json or FILE.json."""
    return out / "diffbench.json" if out.suffix != ".npz" else out.with_suffix(".json")


def check_output_file(path: Path, *, flag: str, overwrite: bool) -> None:
    """Before any work: a single output file (a grid .json, a plot, a merged store) is not a folder, its folder
    exists and is writable, and an existing file needs --overwrite (ConfigError / OutputExistsError, one line)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file path")
    if not path.parent.is_dir():
        raise ConfigError(f"{flag} {path}: the folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output {path} already exists; pass --overwrite to replace it")
    exc = probe_writable(path.parent)
    if exc is not None:
        raise ConfigError(f"cannot write {path}: {path.parent} is not writable ({exc.strerror})")


def check_output(out: Path, *, overwrite: bool) -> None:
    """Before any work: refuse an existing output (unless overwrite) and a path that cannot be written.

    Writability is probed by creating and removing a temporary file in the nearest existing folder, so
    nothing is left behind and a bad path is found before the first network call.
    """
    out = Path(out)
    if out.suffix == ".npz" and out.is_dir():
        raise OutputExistsError(f"{out} is a folder; an .npz output must be a file path")
    exists = out.is_file() or (out.is_dir() and any(out.iterdir())) or sidecar_path(out).exists()
    interrupted = out.suffix == ".npz" and not out.exists() and partial_path(out).is_dir()
    if exists and not overwrite and not interrupted:  # an interrupted run is resumed, once finished_shards agrees
        if out.suffix == ".npz" and not out.exists():  # only the sidecar path is taken (e.g. a grid file X.json)
            raise OutputExistsError(
                f"output {out} writes its sidecar to {sidecar_path(out)}, which already exists; "
                "choose another --out, or pass --overwrite to replace it"
            )
        raise OutputExistsError(f"output {out} already exists; pass --overwrite to replace it")
    folder = out if (out.suffix != ".npz" and out.suffix != ".png") else out.parent
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"cannot write {out}: {probe} is a file, not a folder")
    exc = probe_writable(probe)
    if exc is not None:
        raise ConfigError(f"cannot write {out}: {probe} is not writable ({exc.strerror})")


def probe_writable(folder: Path) -> OSError | None:
    """Create and remove a file in an existing folder (the one test of writability that works for root too):
    None when it worked, else the OSError."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".diffbench-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return exc
    return None


def replace_aside(out: Path) -> None:
    """--overwrite: move an earlier output (and its sidecar) aside atomically, then delete it, so old and
    new results are never mixed."""
    out = Path(out)
    for path in (out, sidecar_path(out), partial_path(out)):
        if path.exists() or path.is_symlink():
            aside = path.with_name(f".{path.name}.replaced-{os.getpid()}")
            os.replace(path, aside)
            if aside.is_dir() and not aside.is_symlink():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                aside.unlink(missing_ok=True)


def partial_path(out: Path) -> Path:
    """Where an .npz output keeps its finished batches until the run completes: FILE.npz.partial/."""
    return out.with_name(out.name + ".partial")


IDENTITY_FILE = "identity.json"  # in FILE.npz.partial/: what the shards were sampled from
_SHARD = re.compile(r"^(\d{6})\.npz$")


def run_identity(record: dict[str, Any]) -> dict[str, Any]:
    """What determines a run's images, with its sha256: stored beside the shards, compared on resume."""
    plain = json.loads(dumps_json(record))  # as stored: inf as "inf", tuples as lists
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), **plain}


@dataclass
class Finished:
    """The shards an interrupted .npz run left, in order: their files, seeds and labels."""

    shards: list[Path] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def images(self) -> np.ndarray:
        """Their images, uint8 NHWC."""
        parts = []
        for path in self.shards:
            with np.load(path) as shard:
                parts.append(shard["images"])
        return np.concatenate(parts)


def finished_shards(out: Path, identity: dict[str, Any], seeds: list[int]) -> Finished | None:
    """The finished batches of an interrupted run into `out` (.npz) of the same identity, or None if there are none.

    A folder of shards from another run (other seeds, spec, model, batch size, versions) is refused, naming what
    differs, so a resumed file is always the one an uninterrupted run writes."""
    partial = partial_path(Path(out))
    if not partial.is_dir():
        return None
    names = sorted(p.name for p in partial.iterdir() if _SHARD.match(p.name))
    if not names:
        return None  # stopped before its first batch: nothing to keep (the folder is reused)
    try:
        stored = json.loads((partial / IDENTITY_FILE).read_text())
    except (OSError, ValueError):
        stored = None
    if not isinstance(stored, dict) or "sha256" not in stored:
        raise OutputExistsError(
            f"{partial} holds shards with no readable {IDENTITY_FILE}; pass --overwrite to start over"
        )
    if stored["sha256"] != identity["sha256"]:
        differ = sorted(k for k in set(stored) | set(identity) if k != "sha256" and stored.get(k) != identity.get(k))
        raise OutputExistsError(
            f"{partial} holds an interrupted run with another {', '.join(differ) or 'identity'}; rerun that "
            "command to resume it, or pass --overwrite to start over"
        )
    done = Finished()
    for k, name in enumerate(names):
        path = partial / name
        try:
            with np.load(path) as shard:
                shard_seeds = shard["seeds"].tolist()
                shard_labels = shard["labels"].tolist()
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise OutputExistsError(f"cannot resume from {path}: {exc}; pass --overwrite to start over") from None
        start = len(done.seeds)
        if name != f"{k:06d}.npz" or shard_seeds != seeds[start : start + len(shard_seeds)]:
            raise OutputExistsError(f"cannot resume from {partial}: {name} is out of order; pass --overwrite")
        done.shards.append(path)
        done.seeds.extend(shard_seeds)
        done.labels.extend(shard_labels)
    return done


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez's layout (uncompressed .npy members), with a fixed member date: equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as fp:
                np.lib.format.write_array(fp, np.asanyarray(array), allow_pickle=False)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write strict JSON atomically (temp file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps_json(data) + "\n")
    os.replace(tmp, path)


class ImageSink:
    """Writes batches as they finish, so an interrupted run keeps every finished image.

    PNG folder: one PNG per seed (named by seed), a `dataset.json` of labels for conditional models
    (EDM's dataset_tool layout), and the sidecar rewritten after every batch (marked incomplete until
    the end). npz: each finished batch is a shard in FILE.npz.partial/, merged into FILE.npz at close.
    """

    def __init__(
        self,
        out: Path | str,
        *,
        provenance: dict[str, Any] | None = None,
        overwrite: bool = False,
        identity: dict[str, Any] | None = None,
        resume: Finished | None = None,
    ):
        self.out = Path(out)
        self.npz = self.out.suffix == ".npz"
        self.provenance = provenance or {}
        self.overwrite = overwrite
        self.identity = identity
        self.opened = False
        self.seeds: list[int] = []
        self.labels: list[int] = []
        self.shards: list[Path] = []
        if resume is not None and resume.shards:  # continue an interrupted .npz run after its last shard
            self.seeds, self.labels, self.shards = list(resume.seeds), list(resume.labels), list(resume.shards)
            self.opened = True

    def _open(self) -> None:
        """Create the output on the first finished batch, so a run that fails early leaves nothing behind
        (and, with overwrite, the earlier output is only moved aside once there is something to replace it)."""
        if self.overwrite:
            replace_aside(self.out)
        if self.npz:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            partial_path(self.out).mkdir(exist_ok=True)
            if self.identity is not None:
                write_json(partial_path(self.out) / IDENTITY_FILE, self.identity)
        else:
            self.out.mkdir(parents=True, exist_ok=True)
        self.opened = True

    def _sidecar(self, *, complete: bool, error: str | None = None) -> None:
        record = dict(self.provenance, complete=complete, images_written=len(self.seeds))
        if self.identity is not None:
            record["identity"] = self.identity["sha256"]
        if not complete and self.npz:
            record["partial"] = str(partial_path(self.out))
        if error is not None:
            record["error"] = error
        write_json(sidecar_path(self.out), record)

    def write(self, images: torch.Tensor, seeds: list[int], labels: torch.Tensor | None) -> None:
        _check_image_shaped(images)
        nhwc = quantize(images).permute(0, 2, 3, 1).numpy()
        lab = labels.numpy().astype(np.int64) if labels is not None else None
        if not self.opened:
            self._open()
        if self.npz:
            shard = partial_path(self.out) / f"{len(self.shards):06d}.npz"
            tmp = shard.with_name(shard.name + ".tmp.npz")
            save_npz(
                tmp,
                images=nhwc,
                seeds=np.asarray(seeds, dtype=np.int64),
                labels=lab if lab is not None else np.zeros(0, dtype=np.int64),
            )
            os.replace(tmp, shard)
            self.shards.append(shard)
        else:
            for img, seed in zip(nhwc, seeds):
                path = self.out / f"{seed:06d}.png"
                tmp = path.with_name(path.name + ".tmp")
                _to_pil(img).save(tmp, format="PNG")
                os.replace(tmp, path)
        self.seeds.extend(seeds)
        if lab is not None:
            self.labels.extend(int(v) for v in lab)
            if not self.npz:
                labels_json = {"labels": [[f"{s:06d}.png", c] for s, c in zip(self.seeds, self.labels)]}
                write_json(self.out / "dataset.json", labels_json)
        self._sidecar(complete=False)

    def close(self, provenance: dict[str, Any] | None = None, *, complete: bool, error: str | None = None) -> None:
        """Finish: merge the npz shards (only when complete) and write the final sidecar."""
        if provenance is not None:
            self.provenance = provenance
        if not self.opened:
            if not complete:
                return  # nothing finished, nothing written
            self._open()
        if self.npz and complete:
            parts = [np.load(p) for p in self.shards]
            tmp = self.out.with_name(self.out.name + ".tmp.npz")
            save_npz(
                tmp,
                images=np.concatenate([p["images"] for p in parts]) if parts else np.zeros((0, 0, 0, 0), np.uint8),
                seeds=np.asarray(self.seeds, dtype=np.int64),
                labels=np.asarray(self.labels, dtype=np.int64),
            )
            os.replace(tmp, self.out)
            shutil.rmtree(partial_path(self.out), ignore_errors=True)
        self._sidecar(complete=complete, error=error)


def grid_image(images: torch.Tensor, *, columns: int | None = None, min_size: int = 256, gutter: int = 1):
    """A PIL image of all samples (float in [-1, 1], or already quantized uint8) in a near-square grid.

    Tiles are separated by a `gutter`-pixel line and the grid is upscaled by an integer factor
    (nearest neighbour) until its shorter side is at least `min_size` pixels, so a person can look at it.
    """
    _check_image_shaped(images)
    u8 = (images if images.dtype == torch.uint8 else quantize(images)).permute(0, 2, 3, 1).numpy()
    n, h, w, c = u8.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    scale = max(1, math.ceil(min_size / max(1, min(rows * h, cols * w))))
    u8 = u8.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    canvas = np.full((rows * (h + gutter) + gutter, cols * (w + gutter) + gutter, c), 255, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        y, x = gutter + r * (h + gutter), gutter + q * (w + gutter)
        canvas[y : y + h, x : x + w] = u8[k]
    return _to_pil(canvas)


def save_image_atomic(image: Any, path: Path) -> None:
    """Save a PIL image under a temporary name, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
