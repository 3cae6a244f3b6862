"""Metric inputs that used to crash or mislead (issue 13 §4): 16-bit PNGs, statistics whose sigma is no
covariance, a KID spread that is not one, and `ideal:path=` a plain .npy."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_error_line
from PIL import Image

from diffbench.errors import ConfigError
from diffbench.metrics.kid import kid, mmd2_unbiased
from diffbench.metrics.sources import iter_uint8, open_source
from diffbench.metrics.stats import load_statistics, statistics_of

EXTRACTOR_MODULE = textwrap.dedent(
    """
    import torch

    class Proj:
        id = "proj"

        def __init__(self):
            self.w = torch.randn(3 * 4 * 4, 5, generator=torch.Generator().manual_seed(0))

        def features(self, x):
            return (x.float() / 255).flatten(1) @ self.w

    def make(device="cpu"):
        return Proj()
    """
)


def run_cli(tmp_path: Path, *args) -> tuple[int, str, str]:
    """The installed console script in a subprocess, with a test extractor module importable."""
    script = Path(sys.executable).parent / "diffbench"
    exe = str(script) if script.exists() else shutil.which("diffbench")
    (tmp_path / "extmod_inputs.py").write_text(EXTRACTOR_MODULE)
    env = dict(os.environ, DIFFBENCH_HOME=str(tmp_path / "home"), TORCH_HOME=str(tmp_path / "torch"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


# ---- 16-bit PNGs: v >> 8 -----------------------------------------------------------------------------


def png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG written from the spec (grey HxW, RGB HxWx3), independent of PIL's encoder."""
    h, w = arr.shape[:2]
    colour = 0 if arr.ndim == 2 else 2
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def read_all(folder: Path) -> torch.Tensor:
    return torch.cat(list(iter_uint8(open_source(folder), batch=2)))


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 65536, (3, 4, 4), dtype=np.uint16)
    (tmp_path / "g").mkdir()
    for i, g in enumerate(grey):
        png16(tmp_path / "g" / f"{i}.png", g)
    Image.fromarray(grey[0]).save(tmp_path / "g" / "3-pil.png")  # PIL's own 16-bit grey writer too
    got = read_all(tmp_path / "g")
    want = (np.concatenate([grey, grey[:1]]) >> 8).astype(np.uint8)[:, None]
    assert open_source(tmp_path / "g").channels == 1
    assert torch.equal(got, torch.from_numpy(want))
    assert got.float().mean() > 100  # clipping put nearly every pixel at 255


def test_sixteen_bit_rgb_and_mixed_folders(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 65536, (2, 4, 4, 3), dtype=np.uint16)
    grey = rng.integers(0, 65536, (4, 4), dtype=np.uint16)
    eight = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    (tmp_path / "rgb").mkdir()
    for i, im in enumerate(rgb):
        png16(tmp_path / "rgb" / f"{i}.png", im)
    assert torch.equal(read_all(tmp_path / "rgb"), torch.from_numpy((rgb >> 8).astype(np.uint8)).permute(0, 3, 1, 2))
    mixed = tmp_path / "mixed"  # 16-bit RGB, 16-bit grey and 8-bit RGB side by side: all RGB
    shutil.copytree(tmp_path / "rgb", mixed)
    png16(mixed / "2.png", grey)
    Image.fromarray(eight).save(mixed / "3.png")
    want = np.concatenate([rgb >> 8, np.repeat((grey >> 8)[None, :, :, None], 3, axis=3), eight[None]]).astype(np.uint8)
    assert open_source(mixed).channels == 3
    assert torch.equal(read_all(mixed), torch.from_numpy(want).permute(0, 3, 1, 2))


def test_sixteen_bit_folder_statistics_through_the_cli_equal_the_8_bit_picture(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 65536, (6, 4, 4, 3), dtype=np.uint16)
    grey = rng.integers(0, 65536, (6, 4, 4), dtype=np.uint16)
    (tmp_path / "s16").mkdir()
    (tmp_path / "s8").mkdir()
    for i in range(6):
        png16(tmp_path / "s16" / f"{i}a.png", rgb[i])
        png16(tmp_path / "s16" / f"{i}b.png", grey[i])
        Image.fromarray((rgb[i] >> 8).astype(np.uint8)).save(tmp_path / "s8" / f"{i}a.png")
        Image.fromarray((grey[i] >> 8).astype(np.uint8)).convert("RGB").save(tmp_path / "s8" / f"{i}b.png")
    code, _, err = run_cli(
        tmp_path, "stats", tmp_path / "s16", "-o", tmp_path / "s16.npz", "--extractor", "extmod_inputs:make"
    )
    assert code == 0, err
    sys.path.insert(0, str(tmp_path))
    try:
        from extmod_inputs import make
    finally:
        sys.path.remove(str(tmp_path))
    want = statistics_of(open_source(tmp_path / "s8"), extractor=make())
    got = np.load(tmp_path / "s16.npz")
    assert np.array_equal(got["mu"], want.mu) and np.array_equal(got["sigma"], want.sigma)


# ---- statistics files whose sigma is not a covariance ----------------------------------------------


def stats_file(path: Path, sigma: np.ndarray) -> Path:
    np.savez(path, mu=np.zeros(sigma.shape[0]), sigma=sigma)
    return path


def spd(d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((d, 3 * d))
    return a @ a.T / (3 * d)


def test_sigma_must_be_symmetric_and_positive_semidefinite(tmp_path):
    good = spd(6, 0)
    assert load_statistics(stats_file(tmp_path / "good.npz", good)).sigma.shape == (6, 6)
    half = np.random.default_rng(1).standard_normal((6, 3))
    singular = half @ half.T
    load_statistics(stats_file(tmp_path / "singular.npz", singular))  # PSD, rank-deficient: accepted
    load_statistics(stats_file(tmp_path / "round.npz", good.astype(np.float32)))  # float32 rounding: accepted
    skew = good.copy()
    skew[0, 1] += 0.1
    with pytest.raises(ConfigError, match=r"skew\.npz: sigma is not symmetric"):
        load_statistics(stats_file(tmp_path / "skew.npz", skew))
    lam, v = np.linalg.eigh(good)
    lam[0] = -0.05 * lam[-1]  # one clearly negative eigenvalue
    indefinite = (v * lam) @ v.T
    indefinite = 0.5 * (indefinite + indefinite.T)
    with pytest.raises(ConfigError, match=r"indefinite\.npz: sigma is not positive semi-definite"):
        load_statistics(stats_file(tmp_path / "indefinite.npz", indefinite))


def test_fid_refuses_a_sigma_that_is_no_covariance_in_one_line(tmp_path):
    good = stats_file(tmp_path / "good.npz", spd(5, 2))
    bad = stats_file(tmp_path / "bad.npz", -spd(5, 3))
    code, _, err = run_cli(tmp_path, "fid", good, "--ref", bad)
    line = one_error_line(code, err)
    assert "bad.npz" in line and "positive semi-definite" in line


# ---- KID: a spread only when there is one ----------------------------------------------------------


def feats(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 4)))


def test_kid_has_no_spread_when_every_subset_is_the_whole_sample():
    a, b = feats(40, 0), feats(40, 1)
    mean, std = kid(features1=a, features2=b, subsets=10, subset_size=1000)  # capped at 40 = all of both
    assert std is None and mean == pytest.approx(mmd2_unbiased(a, b), rel=1e-12)
    assert kid(features1=a, features2=b, subsets=1, subset_size=20)[1] is None  # one subset: no spread
    mean, std = kid(features1=a, features2=feats(80, 2), subsets=10, subset_size=40)  # one side varies
    assert std is not None and std > 0


def test_kid_spread_is_null_in_the_cli_json(tmp_path):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "ref.npz", images=rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8))
    np.savez(tmp_path / "s.npz", images=rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8))
    ext = ("--extractor", "extmod_inputs:make")
    code, _, err = run_cli(
        tmp_path, "stats", tmp_path / "ref.npz", "-o", tmp_path / "ref-stats.npz", *ext, "--keep-features"
    )
    assert code == 0, err
    code, out, err = run_cli(
        tmp_path, "fid", tmp_path / "s.npz", "--ref", tmp_path / "ref-stats.npz", *ext, "--kid", "--json"
    )
    assert code == 0, err
    extras = json.loads(out)["extras"]
    assert extras["kid_std"] is None and np.isfinite(extras["kid_mean"])


# ---- ideal:path= a plain .npy ----------------------------------------------------------------------


def test_ideal_accepts_a_plain_npy_of_points_or_images(tmp_path):
    from diffbench.models.analytic import load_builtin

    points = np.random.default_rng(4).standard_normal((5, 3, 2, 2))
    np.save(tmp_path / "points.npy", points)
    m = load_builtin(f"ideal:path={tmp_path / 'points.npy'}")
    assert m.sample_shape == (3, 2, 2) and torch.equal(m.points, torch.from_numpy(points.reshape(5, -1)))
    imgs = np.random.default_rng(5).integers(0, 256, (4, 2, 2, 3), dtype=np.uint8)
    np.save(tmp_path / "imgs.npy", imgs)
    m = load_builtin(f"ideal:path={tmp_path / 'imgs.npy'}")
    want = torch.from_numpy(imgs.astype(np.float64) / 127.5 - 1).permute(0, 3, 1, 2).reshape(4, -1)
    assert m.sample_shape == (3, 2, 2) and torch.equal(m.points, want)
    np.save(tmp_path / "flat.npy", np.arange(4.0))
    with pytest.raises(ConfigError, match="flat.npy must hold"):
        load_builtin(f"ideal:path={tmp_path / 'flat.npy'}")


def test_ideal_plain_npy_through_the_cli(tmp_path):
    np.save(tmp_path / "points.npy", np.random.default_rng(6).standard_normal((6, 3, 2, 2)))
    code, out, err = run_cli(
        tmp_path,
        "sample",
        "ideal:path=points.npy",
        "--nfe",
        "3",
        "--solver",
        "euler",
        "--seeds",
        "0-2",
        "-o",
        "out.npz",
    )
    assert code == 0, err
    assert np.load(tmp_path / "out.npz")["images"].shape[0] == 3
    np.save(tmp_path / "objs.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, _, err = run_cli(tmp_path, "sample", "ideal:path=objs.npy", "--nfe", "3", "--seeds", "0", "-o", "o2.npz")
    assert "objs.npy" in one_error_line(code, err)
