"""`diffbench sample`, `solvers`, `schedules` end to end, and every bad input as one line + non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_error_line
from PIL import Image

import diffbench


def test_sample_to_png_folder_with_grid_and_sidecar(cli, tmp_path, gmm):
    out, grid = tmp_path / "pngs", tmp_path / "grid.png"
    code, _, err = cli(
        "sample",
        "gmm",
        "--solver",
        "heun",
        "--schedule",
        "edm",
        "--nfe",
        "35",
        "--seeds",
        "0-5",
        "--batch",
        "4",
        "--out",
        out,
        "--grid",
        grid,
    )
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.png")) == [f"{s:06d}.png" for s in range(6)]
    img = np.asarray(Image.open(out / "000003.png"))
    want = diffbench.sample(gmm, seeds=[3], solver="heun", nfe=35, device="cpu").images
    want_u8 = (want * 127.5 + 128).clip(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert img.shape == (8, 8, 3) and np.array_equal(img, want_u8)
    # 6 images: 3 columns, 2 rows of 8 px, upscaled x16 so the short side is >= 256 px, 1 px gutters
    assert Image.open(grid).size == (3 * 8 * 16 + 4, 2 * 8 * 16 + 3)
    side = json.loads((out / "diffbench.json").read_text())
    assert side["complete"] is True and side["images_written"] == 6
    assert side["nfe_counted"] == 35 and side["plan"]["steps"] == 18 and len(side["plan"]["sigmas"]) == 19
    assert side["seeds"] == "0-5" and side["spec"]["solver"] == "heun"
    for key in ("diffbench", "torch", "device", "generator_device"):
        assert key in side["environment"]
    assert "tf32_matmul" not in side["environment"]  # a CPU run claims no TF32 setting
    # defaults are recorded as the values used, never null; options of other solvers are absent
    assert side["spec"]["rho"] == 7 and side["spec"]["S_churn"] == 0 and side["spec"]["alpha"] == 1
    assert "eta" not in side["spec"] and None not in side["spec"].values()
    assert "NFE 35" in err


def test_sample_to_npz(cli, tmp_path):
    out = tmp_path / "s.npz"
    code, _, err = cli(
        "sample",
        "gmm:cond=1",
        "--solver",
        "euler-ancestral",
        "--nfe",
        "8",
        "--seeds",
        "2,4,9-10",
        "--class",
        "1",
        "--out",
        out,
    )
    assert code == 0, err
    with np.load(out) as data:
        assert data["images"].shape == (4, 8, 8, 3) and data["images"].dtype == np.uint8
        assert data["seeds"].tolist() == [2, 4, 9, 10] and data["labels"].tolist() == [1, 1, 1, 1]
    assert json.loads(out.with_suffix(".json").read_text())["spec"]["solver"] == "euler-ancestral"


def test_solvers_and_schedules_json(cli):
    code, out, _ = cli("solvers", "--json")
    rows = json.loads(out)
    assert code == 0 and {"euler", "heun", "ddim", "euler-ancestral"} <= {r["name"] for r in rows}
    assert all({"name", "order", "stochastic", "nfe_rule", "paper"} <= set(r) for r in rows)
    code, out, _ = cli("schedules", "--json")
    assert code == 0 and {"edm", "vp", "ve", "iddpm", "linear", "log-linear", "logsnr"} <= {
        r["name"] for r in json.loads(out)
    }
    code, out, _ = cli("solvers")
    assert code == 0 and "heun" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--solver", "hen"], "unknown solver 'hen'. Did you mean 'heun'?"),
        (["--schedule", "karras"], "unknown schedule 'karras'"),
        (["--nfe", "36"], "nearest reachable: 35 or 37"),
        (["--seeds", "1-x"], "malformed seed list"),
        (["--seeds", "5-2"], "end before start"),
        (["--sigma-min", "-1"], "--sigma-min must be > 0"),
        (["--solver", "euler", "--alpha", "0.5"], "do not apply to solver 'euler'"),
        (["--sigma-t", "vq"], "Invalid value for '--sigma-t'"),
        (["--denoise-to-zero"], "--denoise-to-zero applies only"),
        (["--class", "1"], "unconditional"),
        (["--device", "cuda"], "no CUDA GPU"),
    ],
)
def test_bad_input_is_one_line(cli, tmp_path, args, message):
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = cli("sample", "gmm", "--out", tmp_path / "o", "--seeds", "0-1", *args)
    assert code != 0
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1  # nothing else was printed


def test_unknown_model_is_one_line(cli, tmp_path):
    code, _, err = cli("sample", "gmn", "--out", tmp_path / "o")
    assert code != 0 and "gmm" in err and len(err.strip().splitlines()) == 1


def test_existing_output_needs_overwrite(cli, tmp_path):
    out = tmp_path / "o.npz"
    assert cli("sample", "gmm", "--nfe", "3", "--seeds", "0", "--out", out)[0] == 0
    code, _, err = cli("sample", "gmm", "--nfe", "3", "--seeds", "0", "--out", out)
    assert code != 0 and "already exists; pass --overwrite" in err
    assert cli("sample", "gmm", "--nfe", "3", "--seeds", "0", "--out", out, "--overwrite")[0] == 0


def test_non_finite_keeps_what_was_written(cli, tmp_path, monkeypatch, gmm):
    class BreaksOnSeed5(torch.nn.Module):
        sigma_min, sigma_max, img_channels, img_resolution, label_dim = 0.0, float("inf"), 3, 8, 0

        def round_sigma(self, s):
            return torch.as_tensor(s)

        def forward(self, x, sigma, class_labels=None):
            out = gmm(x, sigma)
            return out * float("nan") if x.shape[0] == 1 and self.breaking else out

    model = BreaksOnSeed5()
    model.breaking = False
    seen = {"n": 0}

    def fake_load(spec, **_):
        return model

    import diffbench.models.load as load_mod

    monkeypatch.setattr(load_mod, "load", fake_load)
    real_write = diffbench.io.ImageSink.write

    def write(self, images, seeds, labels):
        real_write(self, images, seeds, labels)
        seen["n"] += len(seeds)
        model.breaking = seen["n"] >= 4  # the last batch (one image) goes non-finite

    monkeypatch.setattr(diffbench.io.ImageSink, "write", write)
    out = tmp_path / "o"
    code, _, err = cli(
        "sample",
        "whatever",
        "--solver",
        "euler",
        "--nfe",
        "5",
        "--seeds",
        "0-4",
        "--batch",
        "4",
        "--out",
        out,
    )
    assert code != 0 and "non-finite value at step 1/5 (sigma 80 -> " in err and "seeds 4" in err
    one_error_line(code, err, context=True)
    assert len(list(out.glob("*.png"))) == 4
    side = json.loads((out / "diffbench.json").read_text())
    assert side["complete"] is False and side["images_written"] == 4 and "non-finite" in side["error"]


def test_help_is_fast_and_lists_commands(cli):
    code, out, _ = cli("--help")
    assert code == 0 and "sample" in out and "solvers" in out


def test_sample_from_an_edm_pickle_end_to_end(cli, tmp_path, tiny_net):
    """A checkpoint in EDM's pickle format (random weights) samples through the CLI; the sidecar has its sha256."""
    from diffbench.models.edm_pickle import write_edm_pickle
    from diffbench.models.precond import VPPrecond

    model = tiny_net(VPPrecond)
    path = tmp_path / "tiny-vp.pkl"
    write_edm_pickle(path, denoiser=model)
    out = tmp_path / "s.npz"
    code, _, err = cli("sample", path, "--nfe", "7", "--seeds", "0-2", "--out", out)
    assert code == 0, err
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["model"]["source_info"]["format"] == "edm-pickle" and len(side["model"]["source_info"]["sha256"]) == 64
    assert side["plan"]["sigma_max"] == pytest.approx(80.0) and side["model"]["sigma_min"] == 0.0009765625
    want = diffbench.sample(diffbench.load(str(path)), seeds=[0, 1, 2], nfe=7, device="cpu").images
    with np.load(out) as data:
        u8 = (want * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(data["images"], u8)


def test_sidecar_path_taken_is_named(tmp_path: Path) -> None:
    """`--out X.npz` writes X.json beside it: an existing X.json (say a tuned grid) is refused by name."""
    from diffbench.errors import OutputExistsError
    from diffbench.io import check_output

    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(OutputExistsError, match=r"sidecar to .*x\.json, which already exists"):
        check_output(tmp_path / "x.npz", overwrite=False)
    assert (tmp_path / "x.json").read_text() == "{}"


def test_an_input_file_that_is_also_an_output_is_refused_even_with_overwrite(cli, tmp_path: Path) -> None:
    """`--schedule file:g.txt --out g.npz`... and the sidecar g.json of `--out g.npz` over a grid g.json:
    refused even with --overwrite, the grid intact."""
    grid = tmp_path / "g.json"
    grid.write_text(json.dumps({"sigmas": [80.0, 10.0, 1.0, 0.002]}))
    before = grid.read_bytes()
    code, _, err = cli(
        "sample", "gmm", "--solver", "euler", "--schedule", f"file:{grid}", "--nfe", "4", "--seeds", "0-1",
        "--out", tmp_path / "g.npz", "--overwrite",
    )
    assert code == 2 and "is also an output of this run" in one_error_line(code, err), err
    assert grid.read_bytes() == before and not (tmp_path / "g.npz").exists()
