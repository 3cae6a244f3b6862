"""Image sources for metrics: a folder, a zip, an npz of uint8 images, or arrays, streamed as uint8 NCHW."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffbench.errors import ConfigError
from diffbench.io import quantize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageSource:
    """A finite set of same-size images that can be streamed as uint8 NCHW batches and hashed."""

    kind: str  # folder | zip | npz | array
    path: Path | None
    count: int
    channels: int
    resolution: tuple[int, int]  # (H, W)
    members: tuple[str, ...] = ()  # file names for folder / zip, in order
    array_key: str | None = None  # npz member holding the images
    array: Any = None  # in-memory uint8 NHWC array for kind == "array"

    @property
    def label(self) -> str:
        """How a message names this source."""
        return str(self.path) if self.path is not None else "in-memory images"


def open_source(path: str | os.PathLike) -> ImageSource:
    """Open a folder, zip or npz of images; check it is non-empty and of one size (nothing decoded yet)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such file or folder")
    if p.is_dir():
        return _open_folder(p)
    if zipfile.is_zipfile(p) and p.suffix.lower() == ".zip":
        return _open_zip(p)
    if p.suffix.lower() == ".npz":
        return _open_npz(p)
    raise ConfigError(f"{p}: not an image folder, .zip or .npz")


def source_from_array(images: Any) -> ImageSource:
    """Wrap in-memory uint8 images (NHWC numpy, or NCHW uint8 torch) as a source."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ConfigError("image tensors must be uint8 [N, C, H, W]; quantize float images first")
        images = images.permute(0, 2, 3, 1).cpu().numpy()
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise ConfigError(f"image arrays must be uint8 [N, H, W, C], got {arr.dtype} {list(arr.shape)}")
    _check_nhwc(arr.shape, "in-memory images")
    return ImageSource(
        kind="array",
        path=None,
        count=arr.shape[0],
        channels=arr.shape[3],
        resolution=arr.shape[1:3],
        array=arr,
    )


def _check_nhwc(shape: tuple[int, ...], label: str) -> None:
    if shape[0] == 0:
        raise ConfigError(f"{label}: no images")
    if shape[3] not in (1, 3):
        raise ConfigError(f"{label}: images must have 1 or 3 channels (NHWC), got shape {list(shape)}")


def _image_size(fp: Any, name: str, label: str) -> tuple[int, int, int]:
    from PIL import Image

    try:
        with Image.open(fp) as im:  # reads the header only
            mode, fmt, size = im.mode, im.format, (im.height, im.width)
    except Exception as exc:  # PIL raises many kinds
        raise ConfigError(f"{label}: cannot read image {name}: {exc}") from None
    if mode == "F" or (mode == "I" and fmt != "PNG"):  # no agreed scale to 8 bits
        kind = "float" if mode == "F" else "32-bit integer"
        raise ConfigError(f"{label}: {name} has {kind} pixels; save it as 8- or 16-bit")
    return (1 if mode in ("L", "1", "I") or mode.startswith("I;16") else 3), *size


def _same_size(sizes: list[tuple[int, int, int]], names: list[str], label: str) -> tuple[int, int, int]:
    if not sizes:
        raise ConfigError(f"{label}: no images ({', '.join(IMAGE_SUFFIXES)})")
    first = sizes[0]
    for size, name in zip(sizes, names, strict=True):
        if size[1:] != first[1:]:
            raise ConfigError(
                f"{label}: mixed image sizes ({names[0]} is {first[2]}x{first[1]}, {name} is {size[2]}x{size[1]})"
            )
    return (3 if any(s[0] == 3 for s in sizes) else 1, first[1], first[2])


def _open_folder(p: Path) -> ImageSource:
    names = sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    sizes = [_image_size(p / n, n, str(p)) for n in names]
    c, h, w = _same_size(sizes, names, str(p))
    return ImageSource(kind="folder", path=p, count=len(names), channels=c, resolution=(h, w), members=tuple(names))


def _open_zip(p: Path) -> ImageSource:
    with zipfile.ZipFile(p) as zf:
        names = sorted(n for n in zf.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES)
        sizes = []
        for n in names:
            with zf.open(n) as fp:
                sizes.append(_image_size(io.BytesIO(fp.read()), n, str(p)))
    c, h, w = _same_size(sizes, names, str(p))
    return ImageSource(kind="zip", path=p, count=len(names), channels=c, resolution=(h, w), members=tuple(names))


def _npy_header(fp: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    from numpy.lib import format as npformat

    version = npformat.read_magic(fp)
    if version == (1, 0):
        return npformat.read_array_header_1_0(fp)
    return npformat.read_array_header_2_0(fp)


def npz_image_key(p: Path) -> str | None:
    """The npz member holding uint8 images: 'images' if present, else the first uint8 array (None if none)."""
    with zipfile.ZipFile(p) as zf:
        names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        order = (["images"] if "images" in names else []) + [n for n in names if n != "images"]
        for key in order:
            with zf.open(key + ".npy") as fp:
                _shape, _fortran, dtype = _npy_header(fp)
            if dtype == np.uint8:
                return key
    return None


def _open_npz(p: Path) -> ImageSource:
    try:
        key = npz_image_key(p)
    except (zipfile.BadZipFile, ValueError) as exc:
        raise ConfigError(f"{p}: not a readable npz ({exc})") from None
    if key is None:
        raise ConfigError(f"{p}: no uint8 image array in this npz (expected key 'images', NHWC uint8)")
    with zipfile.ZipFile(p) as zf, zf.open(key + ".npy") as fp:
        shape, fortran, _ = _npy_header(fp)
    if len(shape) != 4 or fortran:
        raise ConfigError(f"{p}: array '{key}' must be C-ordered uint8 [N, H, W, C], got shape {list(shape)}")
    _check_nhwc(shape, str(p))
    return ImageSource(kind="npz", path=p, count=shape[0], channels=shape[3], resolution=shape[1:3], array_key=key)


def iter_uint8(source: ImageSource, *, batch: int, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
    """Stream images [start, stop) of a source as uint8 NCHW CPU tensors of at most `batch` images."""
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    stop = source.count if stop is None else min(stop, source.count)
    if source.kind == "array":
        for i in range(start, stop, batch):
            yield _to_nchw(source.array[i : min(i + batch, stop)], source.channels)
    elif source.kind == "npz":
        yield from _iter_npz(source, batch=batch, start=start, stop=stop)
    else:
        yield from _iter_files(source, batch=batch, start=start, stop=stop)


def _to_nchw(nhwc: np.ndarray, channels: int) -> torch.Tensor:
    return torch.from_numpy(np.array(nhwc, dtype=np.uint8)).permute(0, 3, 1, 2).contiguous()


def _iter_npz(source: ImageSource, *, batch: int, start: int, stop: int) -> Iterator[torch.Tensor]:
    h, w = source.resolution
    per_image = h * w * source.channels
    assert source.path is not None
    with zipfile.ZipFile(source.path) as zf, zf.open(f"{source.array_key}.npy") as fp:
        _npy_header(fp)
        _skip(fp, start * per_image)
        for i in range(start, stop, batch):
            n = min(batch, stop - i)
            buf = _read_exact(fp, n * per_image, source)
            arr = np.frombuffer(buf, dtype=np.uint8).reshape(n, h, w, source.channels)
            yield _to_nchw(arr, source.channels)


def _skip(fp: Any, nbytes: int) -> None:
    while nbytes > 0:
        chunk = fp.read(min(nbytes, _HASH_CHUNK * 16))
        if not chunk:
            return
        nbytes -= len(chunk)


def _read_exact(fp: Any, nbytes: int, source: ImageSource) -> bytes:
    buf = fp.read(nbytes)
    if len(buf) != nbytes:
        raise ConfigError(f"{source.label}: array '{source.array_key}' is truncated")
    return buf


def _iter_files(source: ImageSource, *, batch: int, start: int, stop: int) -> Iterator[torch.Tensor]:
    assert source.path is not None
    zf = zipfile.ZipFile(source.path) if source.kind == "zip" else None
    try:
        for i in range(start, stop, batch):
            names = source.members[i : min(i + batch, stop)]
            arrs = [_decode(zf, source, n) for n in names]
            yield _to_nchw(np.stack(arrs), source.channels)
    finally:
        if zf is not None:
            zf.close()


def _decode(zf: zipfile.ZipFile | None, source: ImageSource, name: str) -> np.ndarray:
    from PIL import Image

    assert source.path is not None
    fp: Any = io.BytesIO(zf.read(name)) if zf is not None else source.path / name
    with Image.open(fp) as im:
        im = _to_8bit(im)
        im = im.convert("RGB" if source.channels == 3 else "L")
        arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _to_8bit(im: Any) -> Any:
    """16-bit grey becomes 8-bit by v >> 8 (PIL's own convert would clip it at 255).

    PIL already reads 16-bit RGB(A) PNGs as 8-bit by their high byte, so every 16-bit picture maps the
    same way. (32-bit integer and float pixels are refused when the source is opened.)
    """
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode == "I":  # "I": a 16-bit PNG read by an older PIL
        return Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L")
    return im


def source_sha256(source: ImageSource) -> str:
    """sha256 identifying a source: of the file for zip/npz, of sorted (name, content) for a folder."""
    h = hashlib.sha256()
    path = source.path
    if source.kind in ("zip", "npz"):
        assert path is not None
        _hash_file(h, path)
    elif source.kind == "folder":
        assert path is not None
        for name in source.members:
            h.update(name.encode() + b"\0")
            _hash_file(h, path / name)
    else:
        h.update(np.ascontiguousarray(source.array).tobytes())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of one file's bytes."""
    h = hashlib.sha256()
    _hash_file(h, Path(path))
    return h.hexdigest()


def _hash_file(h: Any, path: Path) -> None:
    with open(path, "rb") as fp:
        while chunk := fp.read(_HASH_CHUNK):
            h.update(chunk)


def batches_from_floats(images: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Quantize a stream of float image batches in [-1, 1] ([B, C, H, W]) to uint8 once (REFERENCE §1)."""
    for x in images:
        yield quantize(x)
