"""Image sources: folders, zips and npz files read back exactly, any batching, bad input refused."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from diffbench.errors import ConfigError
from diffbench.metrics.sources import (
    batches_from_floats,
    iter_uint8,
    open_source,
    source_from_array,
    source_sha256,
)


def rand_images(n=7, h=5, w=6, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def write_folder(path, imgs):
    path.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(imgs):
        Image.fromarray(im[:, :, 0] if im.shape[2] == 1 else im).save(path / f"{i:06d}.png")
    return path


def read_all(src, batch):
    return torch.cat(list(iter_uint8(src, batch=batch)))


def nchw(imgs):
    return torch.from_numpy(imgs).permute(0, 3, 1, 2)


def test_folder_round_trip_exact_and_batch_independent(tmp_path):
    imgs = rand_images()
    src = open_source(write_folder(tmp_path / "f", imgs))
    assert (src.kind, src.count, src.channels, src.resolution) == ("folder", 7, 3, (5, 6))
    for batch in (1, 3, 7, 100):
        assert torch.equal(read_all(src, batch), nchw(imgs))


def test_grey_folder_has_one_channel(tmp_path):
    imgs = rand_images(c=1)
    src = open_source(write_folder(tmp_path / "g", imgs))
    assert src.channels == 1 and torch.equal(read_all(src, 2), nchw(imgs))


def test_zip_round_trip(tmp_path):
    imgs = rand_images(seed=1)
    folder = write_folder(tmp_path / "f", imgs)
    zpath = tmp_path / "imgs.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"sub/{f.name}")
    src = open_source(zpath)
    assert src.kind == "zip" and torch.equal(read_all(src, 4), nchw(imgs))


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_streams_ranges_exactly(tmp_path, compressed):
    imgs = rand_images(n=11, seed=2)
    path = tmp_path / "s.npz"
    (np.savez_compressed if compressed else np.savez)(path, images=imgs, labels=np.arange(11))
    src = open_source(path)
    assert (src.kind, src.array_key, src.count) == ("npz", "images", 11)
    assert torch.equal(read_all(src, 4), nchw(imgs))
    part = torch.cat(list(iter_uint8(src, batch=2, start=3, stop=8)))
    assert torch.equal(part, nchw(imgs[3:8]))


def test_npz_first_uint8_array_when_no_images_key(tmp_path):
    imgs = rand_images(n=3, seed=3)
    path = tmp_path / "s.npz"
    np.savez(path, a_float=np.zeros(3), x=imgs)
    src = open_source(path)
    assert src.array_key == "x" and torch.equal(read_all(src, 2), nchw(imgs))


def test_array_source_and_sha256(tmp_path):
    imgs = rand_images(seed=4)
    a = source_from_array(imgs)
    assert torch.equal(read_all(a, 3), nchw(imgs))
    assert source_from_array(nchw(imgs)).count == 7
    changed = imgs.copy()
    changed[0, 0, 0, 0] ^= 1
    assert source_sha256(a) == source_sha256(source_from_array(imgs.copy()))
    assert source_sha256(a) != source_sha256(source_from_array(changed))


def test_float_batches_are_quantized_by_edm_rule():
    # uint8 = clip(x*127.5 + 128, 0, 255) truncated (REFERENCE §1)
    x = torch.tensor([-1.5, -1.0, 0.0, 0.5, 0.999, 1.0, 2.0], dtype=torch.float64).reshape(1, 1, 1, 7)
    (q,) = list(batches_from_floats([x]))
    assert q.dtype == torch.uint8
    assert q.flatten().tolist() == [0, 0, 128, 191, 255, 255, 255]


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        open_source(tmp_path / "empty")


def test_mixed_sizes(tmp_path):
    folder = write_folder(tmp_path / "m", rand_images(n=2))
    Image.fromarray(rand_images(n=1, h=9, w=9)[0]).save(folder / "zz.png")
    with pytest.raises(ConfigError, match="mixed image sizes"):
        open_source(folder)


def test_bad_npz_and_paths(tmp_path):
    np.savez(tmp_path / "f.npz", x=np.zeros((2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(ConfigError, match="no uint8 image array"):
        open_source(tmp_path / "f.npz")
    np.savez(tmp_path / "nchw.npz", images=np.zeros((2, 3, 4, 4), dtype=np.uint8))
    with pytest.raises(ConfigError, match="1 or 3 channels"):
        open_source(tmp_path / "nchw.npz")
    np.savez(tmp_path / "e.npz", images=np.zeros((0, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ConfigError, match="no images"):
        open_source(tmp_path / "e.npz")
    with pytest.raises(ConfigError, match="no such file"):
        open_source(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ConfigError, match="not an image folder"):
        open_source(tmp_path / "x.txt")
