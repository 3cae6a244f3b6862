"""What a real `diffbench sample` process leaves on disk: after interrupts, overwrites, bad output paths
and specs refused before any work (issue 13 §3), and the provenance it records (issue 9 §4)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import diffbench
from diffbench.io import quantize

BIN = str(Path(sys.executable).parent / "diffbench")


def run(*args, cwd=None):
    p = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def _wait_for(pred, proc, timeout=240.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("timed out waiting for the first finished batch")


def _images_written(sidecar: Path) -> int:
    try:
        return int(json.loads(sidecar.read_text())["images_written"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)])
def test_signal_keeps_finished_batches(tmp_path, sig, code):
    out = tmp_path / "s.npz"
    proc = subprocess.Popen(
        [BIN, "sample", "gmm", "--solver", "euler", "--nfe", "20", "--seeds", "0-9999", "--batch", "4", "--out", out],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    partial = tmp_path / "s.npz.partial"
    # a finished batch: the sidecar (rewritten after each batch) counts it; a shard's name alone is not enough, since
    # a shard being written (NAME.tmp.npz, renamed when complete) matches *.npz too
    _wait_for(lambda: _images_written(tmp_path / "s.json") >= 4, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code
    assert "Traceback" not in err
    if code > 0:
        assert err.strip().splitlines()[-1] == ("error: interrupted" if code == 130 else "error: terminated (SIGTERM)")
    side = json.loads((tmp_path / "s.json").read_text())
    assert side["complete"] is False and not out.exists()
    shards = sorted(partial.glob("0*.npz"))
    assert side["images_written"] >= 4 and len(shards) * 4 >= side["images_written"]
    first = np.load(shards[0])
    assert first["seeds"].tolist() == [0, 1, 2, 3]
    want = diffbench.sample(diffbench.load("gmm"), seeds=[0, 1, 2, 3], solver="euler", nfe=20, device="cpu")
    assert np.array_equal(first["images"], quantize(want.images).permute(0, 2, 3, 1).numpy())


def test_sigint_on_png_folder_writes_sidecar(tmp_path):
    out = tmp_path / "pngs"
    proc = subprocess.Popen(
        [BIN, "sample", "gmm", "--solver", "euler", "--nfe", "20", "--seeds", "0-9999", "--batch", "4", "--out", out],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: (out / "000003.png").exists(), proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    side = json.loads((out / "diffbench.json").read_text())
    pngs = sorted(out.glob("*.png"))
    assert side["complete"] is False and side["error"] == "interrupted" and side["images_written"] == len(pngs)


def test_overwrite_never_mixes_runs(tmp_path):
    out = tmp_path / "o"
    assert run("sample", "gmm", "--solver", "euler", "--nfe", "4", "--seeds", "0-11", "--out", out)[0] == 0
    code, _, err = run("sample", "gmm", "--solver", "euler", "--nfe", "4", "--seeds", "0-3", "--out", out)
    assert code != 0 and "--overwrite" in err
    assert run("sample", "gmm", "--solver", "heun", "--nfe", "5", "--seeds", "0-3", "--out", out, "--overwrite")[0] == 0
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:06d}.png" for i in range(4)]
    assert json.loads((out / "diffbench.json").read_text())["spec"]["solver"] == "heun"
    assert not list(tmp_path.glob(".o.replaced-*"))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--out", "{tmp}/afile/out/"], "afile is a file"),
        (["--out", "/proc/x.npz"], "not writable"),
        (["--out", "{tmp}/ok", "--grid", "{tmp}/afile/g.png"], "afile is a file"),
        (["--out", "{tmp}/ok", "--grid", "{tmp}/g.jpg"], "--grid"),
        (["--out", "{tmp}/ok", "--alpha", "0"], "--alpha"),
        (["--out", "{tmp}/ok", "--alpha", "2"], "--alpha"),
        (["--out", "{tmp}/ok", "--rho", "nan"], "--rho"),
        (["--out", "{tmp}/ok", "--solver", "restart", "--restart-tmin", "1", "--restart-tmax", "0.5"], "--restart"),
        (["--out", "{tmp}/ok", "--restart-n", "-1", "--solver", "restart"], "--restart-n"),
    ],
)
def test_bad_output_or_spec_leaves_nothing(tmp_path, args, needle):
    (tmp_path / "afile").write_text("x")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run("sample", "gmm", "--seeds", "0-3", *args)
    assert code != 0 and "Traceback" not in err and needle in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing was created


def test_non_image_model_is_refused_before_output(tmp_path):
    code, _, err = run("sample", "gmm:shape=2", "--seeds", "0-3", "--out", tmp_path / "o")
    assert code != 0 and "not images" in err and not (tmp_path / "o").exists()


def test_provenance_labels_and_command(tmp_path):
    out = tmp_path / "c"
    code, _, _ = run("sample", "gmm:cond=1", "--solver", "euler", "--nfe", "4", "--seeds", "0-5", "--out", out)
    assert code == 0
    side = _strict((out / "diffbench.json").read_text())
    assert side["command"].startswith("diffbench sample gmm:cond=1 --solver euler")
    assert side["class"] is None and side["complete"] is True
    labels = json.loads((out / "dataset.json").read_text())["labels"]
    assert [name for name, _ in labels] == [f"{i:06d}.png" for i in range(6)]
    want = diffbench.sample(diffbench.load("gmm:cond=1"), seeds=range(6), solver="euler", nfe=4, device="cpu")
    assert [c for _, c in labels] == want.class_labels.tolist()
    code, _, _ = run(
        "sample",
        "gmm:cond=1",
        "--nfe",
        "4",
        "--solver",
        "euler",
        "--seeds",
        "0-1",
        "--class",
        "2",
        "--out",
        tmp_path / "d",
    )
    side = _strict((tmp_path / "d" / "diffbench.json").read_text())
    assert code == 0 and side["class"] == 2
    assert [c for _, c in json.loads((tmp_path / "d" / "dataset.json").read_text())["labels"]] == [2, 2]


def test_json_outputs_are_standard_json():
    for cmd in (["solvers", "--json"], ["schedules", "--json"]):
        code, out, _ = run(*cmd)
        assert code == 0
        _strict(out)
    from diffbench.io_json import dumps_json

    assert _strict(dumps_json({"a": float("inf"), "b": float("nan"), "c": (1, 2)})) == {
        "a": "inf",
        "b": None,
        "c": [1, 2],
    }


def test_grid_is_large_enough_to_look_at(tmp_path):
    from diffbench.io import grid_image

    img = grid_image(torch.zeros(4, 1, 8, 8))
    assert min(img.size) >= 256
    arr = np.asarray(img)
    assert (arr[0] == 255).all() and (arr[:, 0] == 255).all()  # the one-pixel gutter


def test_sidecar_with_unknown_network_class_names_class_and_sidecar(tmp_path):
    path = tmp_path / "net.pt"
    torch.save({"w": torch.zeros(1)}, path)
    side = {"network": "MyFancyUNet", "network_kwargs": {}, "precond": "EDMPrecond"}
    path.with_suffix(".json").write_text(json.dumps(side))
    code, _, err = run("sample", path, "--seeds", "0-1", "--out", tmp_path / "o")
    assert code == 1 and "Traceback" not in err
    assert "MyFancyUNet" in err and "net.json" in err and "unknown model" not in err
