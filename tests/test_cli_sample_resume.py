"""`diffbench sample --out FILE.npz` after an interrupt: the same command resumes from FILE.npz.partial/ and writes
the file an uninterrupted run writes, bit for bit; another spec is refused; --overwrite starts over (issue 18)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import diffbench.io

BIN = str(Path(sys.executable).parent / "diffbench")
# 6 batches of 4 at 40 evaluations each: long enough per batch (~0.1 s idle) to stop the run after its first shard
ARGS = ["sample", "gmm", "--solver", "euler", "--nfe", "40", "--seeds", "0-23", "--batch", "4"]


def _interrupted(out: Path) -> None:
    """Run ARGS into `out` in a real process and Ctrl-C it once its first shard is on disk."""
    proc = subprocess.Popen([BIN, *ARGS, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    partial = out.with_name(out.name + ".partial")
    t0 = time.time()
    while not (partial / "000000.npz").exists():
        assert proc.poll() is None, f"ended before its first shard: {proc.communicate()}"
        assert time.time() - t0 < 240, "no shard after 240 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert not out.exists() and len(list(partial.glob("0*.npz"))) < 6


def _run(*args) -> tuple[int, str]:
    p = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=600)
    return p.returncode, p.stderr


def test_the_same_command_resumes_and_writes_the_uninterrupted_file(tmp_path, cli):
    full, out = tmp_path / "full.npz", tmp_path / "big.npz"
    assert cli(*ARGS, "--out", full)[0] == 0  # the uninterrupted file (in-process: the same code, no start-up)
    _interrupted(out)
    kept = sorted(p.name for p in out.with_name("big.npz.partial").glob("0*.npz"))
    code, err = _run(*ARGS, "--out", out)
    assert code == 0 and f"resuming {out}: {4 * len(kept)} of 24 images already finished" in err, err
    assert out.read_bytes() == full.read_bytes()  # arrays, seeds, labels and the file itself
    assert not out.with_name("big.npz.partial").exists()
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["complete"] is True and side["images_written"] == 24
    assert side["identity"] == json.loads(full.with_suffix(".json").read_text())["identity"]


def _interrupt_in_process(monkeypatch, after: int) -> None:
    """Make ImageSink.write raise KeyboardInterrupt (Ctrl-C) once `after` shards are written."""
    real = diffbench.io.ImageSink.write

    def write(self, images, seeds, labels):
        if len(self.shards) >= after:
            raise KeyboardInterrupt
        real(self, images, seeds, labels)

    monkeypatch.setattr(diffbench.io.ImageSink, "write", write)


SMALL = ["sample", "gmm", "--solver", "euler", "--nfe", "4", "--seeds", "0-9", "--batch", "4"]


@pytest.mark.parametrize(
    "change,named",
    [
        (["--seeds", "0-11"], "seeds"),
        (["--nfe", "6"], "plan, spec"),
        (["--batch", "2"], "batch"),
        (["--solver", "heun", "--nfe", "5"], "plan, solver_options, spec"),
    ],
)
def test_another_run_is_refused_in_one_line_and_keeps_the_shards(cli, tmp_path, monkeypatch, change, named):
    out = tmp_path / "o.npz"
    with monkeypatch.context() as m:
        _interrupt_in_process(m, after=1)
        assert cli(*SMALL, "--out", out)[0] == 130
    shards = sorted((tmp_path / "o.npz.partial").iterdir())
    args = list(SMALL)
    for flag, value in zip(change[::2], change[1::2]):
        args[args.index(flag) + 1] = value
    code, _, err = cli(*args, "--out", out)
    assert code == 1 and err.strip() == (
        f"error: {out}.partial holds an interrupted run with another {named}; rerun that command to resume it, "
        "or pass --overwrite to start over"
    ), err
    assert sorted((tmp_path / "o.npz.partial").iterdir()) == shards and not out.exists()


def test_overwrite_starts_over(cli, tmp_path, monkeypatch):
    out, fresh = tmp_path / "o.npz", tmp_path / "fresh.npz"
    assert cli(*SMALL, "--nfe", "6", "--out", fresh)[0] == 0
    with monkeypatch.context() as m:
        _interrupt_in_process(m, after=2)
        assert cli(*SMALL, "--out", out)[0] == 130
    code, _, err = cli(*SMALL, "--nfe", "6", "--out", out, "--overwrite")
    assert code == 0 and "resuming" not in err
    assert out.read_bytes() == fresh.read_bytes() and not (tmp_path / "o.npz.partial").exists()


def test_a_resumed_run_may_be_interrupted_again_and_ends_with_the_grid(cli, tmp_path, monkeypatch):
    out, full = tmp_path / "o.npz", tmp_path / "full.npz"
    assert cli(*SMALL, "--out", full, "--grid", tmp_path / "full.png")[0] == 0
    for shards in (1, 2):
        with monkeypatch.context() as m:
            _interrupt_in_process(m, after=shards)
            assert cli(*SMALL, "--out", out)[0] == 130
        assert len(list((tmp_path / "o.npz.partial").glob("0*.npz"))) == shards
    assert cli(*SMALL, "--out", out, "--grid", tmp_path / "o.png")[0] == 0
    assert out.read_bytes() == full.read_bytes()
    assert (tmp_path / "o.png").read_bytes() == (tmp_path / "full.png").read_bytes()
    with np.load(out) as f:
        assert f["seeds"].tolist() == list(range(10))


@pytest.mark.parametrize("name", ["x.txt", "x.NPZ", "samples.png"])
def test_an_output_is_a_folder_or_an_npz(cli, tmp_path, name):
    code, _, err = cli("sample", "gmm", "--nfe", "3", "--seeds", "0", "--out", tmp_path / name)
    assert code != 0 and err.strip().startswith("error: --out") and "folder" in err and ".npz" in err
    assert list(tmp_path.iterdir()) == []


def test_shards_without_their_identity_are_refused_and_an_empty_folder_is_reused(cli, tmp_path, monkeypatch):
    out = tmp_path / "o.npz"
    with monkeypatch.context() as m:
        _interrupt_in_process(m, after=1)
        assert cli(*SMALL, "--out", out)[0] == 130
    partial = tmp_path / "o.npz.partial"
    (partial / "identity.json").unlink()
    code, _, err = cli(*SMALL, "--out", out)
    assert code == 1 and err.strip() == f"error: {partial} holds shards with no readable identity.json; pass " + (
        "--overwrite to start over"
    )
    (partial / "000000.npz").unlink()  # nothing finished: the folder is reused
    assert cli(*SMALL, "--nfe", "6", "--out", out)[0] == 0 and out.exists() and not partial.exists()
