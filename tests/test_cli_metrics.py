"""`diffbench stats` and `diffbench fid`: results, JSON, sampler specs, one clear line per bad input."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from conftest import images, one_error_line
from PIL import Image

EXTRACTOR_MODULE = textwrap.dedent(
    """
    import torch

    class Proj:
        def __init__(self, seed, id, pixels):
            self.w = torch.randn(pixels, 6, generator=torch.Generator().manual_seed(seed))
            self.id = id

        def features(self, x):
            return (x.float() / 255).flatten(1) @ self.w[: x[0].numel()]

    def make(device="cpu"):
        return Proj(0, "proj", 3 * 8 * 8)

    def other(device="cpu"):
        return Proj(1, "proj-other", 3 * 8 * 8)
    """
)


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no Inception weights there
    (tmp_path / "extmod_metrics_cli.py").write_text(EXTRACTOR_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))


EXT = ("--extractor", "extmod_metrics_cli:make")


@pytest.fixture()
def ref(tmp_path, cli):
    np.savez(tmp_path / "refimgs.npz", images=images(200, seed=1, size=8))
    code, out, err = cli("stats", tmp_path / "refimgs.npz", "-o", tmp_path / "ref.npz", *EXT, "--keep-features")
    assert code == 0, err
    assert "200 images 8x8, extractor proj, 6-d, features kept" in out
    return tmp_path / "ref.npz"


def test_fid_of_the_reference_images_is_zero_and_json(tmp_path, cli, ref):
    code, out, _ = cli("fid", tmp_path / "refimgs.npz", "--ref", ref, *EXT)
    assert code == 0 and out.startswith("FD (proj features) 0.0000") and "n=200" in out
    code, out, _ = cli(
        "fid",
        tmp_path / "refimgs.npz",
        "--ref",
        ref,
        *EXT,
        "--json",
        "--blocks",
        "2",
        "--kid",
        "--pr",
        "--allow-small-n",
    )
    r = json.loads(out)
    # n is the N behind the value (all 200 images, issue 20); each block holds 100
    assert code == 0 and r["n"] == 200 and r["block_n"] == 100 and len(r["blocks"]) == 2 and len(r["loo"]) == 2
    assert r["extractor_id"] == "proj"
    assert r["extras"]["precision"] == 1.0 and r["ref_n"] == 200


def test_fid_of_a_folder_with_blocks(tmp_path, cli, ref):
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, im in enumerate(images(30, seed=2, size=8)):
        Image.fromarray(im).save(folder / f"{i:05d}.png")
    code, out, err = cli("fid", folder, "--ref", ref, *EXT, "--blocks", "3")
    assert code == 0, err
    # issue 20: the FD of all 30 with its jackknife interval over the blocks; the estimate at infinite n
    assert "95% jackknife interval over 3 seed blocks of the FD (proj features) of all 30" in out
    assert "FD-inf" in out and "per block (n=10 each)" in out
    # --show (a mean or min of block values) is retired: one line saying why
    code, out, err = cli("fid", folder, "--ref", ref, *EXT, "--blocks", "3", "--show", "min")
    assert code == 2 and err.strip().startswith("error: --show is retired: the headline is now the FID of all N")


def test_fid_straight_from_a_sampler_spec(tmp_path, cli, ref):
    code, out, err = cli(
        "fid",
        "--model",
        "gmm",
        "--solver",
        "euler",
        "--nfe",
        "4",
        "--seeds",
        "0-15",
        "--ref",
        ref,
        *EXT,
        "--device",
        "cpu",
        "--json",
    )
    assert code == 0, err
    r = json.loads(out)
    assert r["n"] == 16 and r["samples"]["nfe_counted"] == 4 and r["fid"] > 0


def test_stats_is_cached(tmp_path, cli, ref):
    code, out, _ = cli("stats", tmp_path / "refimgs.npz", "-o", tmp_path / "again.npz", *EXT, "--keep-features")
    assert code == 0 and "(from cache)" in out


def write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_each_bad_input_is_one_line(tmp_path, cli, ref):
    s = write(tmp_path / "s.npz", images=images(50, seed=3, size=8))
    (tmp_path / "empty").mkdir()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(images(1, size=8)[0]).save(mixed / "a.png")
    Image.fromarray(images(1, size=16)[0]).save(mixed / "b.png")
    edm = write(tmp_path / "edm.npz", mu=np.zeros(6), sigma=np.eye(6))
    nan = write(tmp_path / "nan.npz", mu=np.zeros(6), sigma=np.full((6, 6), np.inf))
    cases = [
        (("fid", tmp_path / "missing", "--ref", ref, *EXT), "no such file"),
        (("fid", tmp_path / "empty", "--ref", ref, *EXT), "no images"),
        (("fid", mixed, "--ref", ref, *EXT), "mixed image sizes"),
        (("fid", s, "--ref", ref, "--extractor", "extmod_metrics_cli:other"), "come from extractor 'proj'"),
        (
            (
                "fid",
                write(tmp_path / "big.npz", images=images(50, size=16)),
                "--ref",
                ref,
                "--extractor",
                "extmod_metrics_cli:make",
            ),
            "different resolution",
        ),
        (("fid", write(tmp_path / "few.npz", images=images(4, size=8)), "--ref", ref, *EXT), "needs at least 7"),
        (("fid", s, "--ref", edm, *EXT, "--kid"), "--keep-features"),
        (("fid", s, "--ref", nan, *EXT), "NaN or Inf"),
        (("fid", s, "--ref", ref, "--extractor", "no-such-net"), "unknown feature extractor"),
        (("fid", s, "--ref", ref), "weights-inception-2015-12-05-6726825d.pth"),
        (("fid", "--ref", ref, *EXT), "give SAMPLES"),
        (("stats", s, "-o", ref, *EXT), "already exists"),
        (("stats", tmp_path / "empty", "-o", tmp_path / "o.npz", *EXT), "no images"),
    ]
    for args, expected in cases:
        code, _, err = cli(*args)
        line = one_error_line(code, err)
        assert expected in line, (args, line)


def test_statistics_file_on_the_samples_side(tmp_path, cli, ref):
    np.savez(tmp_path / "s.npz", images=images(100, seed=4, size=8))
    code, _, err = cli("stats", tmp_path / "s.npz", "-o", tmp_path / "s-stats.npz", *EXT)
    assert code == 0, err
    code, out_stats, _ = cli("fid", tmp_path / "s-stats.npz", "--ref", ref, "--json")  # no extractor needed
    code2, out_imgs, _ = cli("fid", tmp_path / "s.npz", "--ref", ref, *EXT, "--json")
    assert code == code2 == 0
    assert json.loads(out_stats)["fid"] == pytest.approx(json.loads(out_imgs)["fid"], rel=1e-12)
    code, _, err = cli("fid", tmp_path / "s-stats.npz", "--ref", ref, "--blocks", "2")
    assert "seed blocks need the samples themselves" in one_error_line(code, err)
