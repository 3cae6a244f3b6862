"""One cell across many processes: `torchrun -m diffbench sweep / fid --model / sample` on 2 CPU processes
(gloo) gives the numbers (and images) of one process bit for bit; only rank 0 writes and prints; a resumed
launch finishes the cell; ranks that disagree on the command or the model file, or cannot load it, stop
before any work with one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = "gmm:components=2,shape=1x2x2,seed=3"
BUILTIN = Path(__file__).resolve().parents[1] / "diffbench" / "models" / "builtin"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def env(tmp_path):
    e = dict(os.environ)
    e.update(DIFFBENCH_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", DIFFBENCH_DIST_TIMEOUT="120")
    return e


def torchrun(env, cwd, *args, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_port())]
    cmd += ["-m", "diffbench", *map(str, args)]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def single(env, cwd, *args, timeout=300):
    cmd = [sys.executable, "-m", "diffbench", *map(str, args)]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def by_rank(env, cwds, *args, extra=None, timeout=180):
    """Two ranks started by hand (as torchrun would), each in its own folder, rank 1 with `extra` arguments."""
    port, procs = _port(), []
    for r, cwd in enumerate(cwds):
        e = {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(r), "LOCAL_RANK": str(r)}
        e["WORLD_SIZE"] = "2"
        cmd = [sys.executable, "-m", "diffbench", *map(str, args), *(extra or [] if r else [])]
        procs.append(subprocess.Popen(cmd, env=e, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return [(p.wait(timeout=timeout), *p.communicate()) for p in procs]


SWEEP = ["sweep", TINY, "--solver", "euler,heun", "--nfe", "5", "--seeds", "0-47", "--blocks", "3", "--batch", "8"]


def test_torchrun_sweep_equals_one_process(tmp_path, env, cli):
    two = torchrun(env, tmp_path, *SWEEP, "--store", "two.db", "--json")
    assert two.returncode == 0, two.stderr
    rows2 = json.loads(two.stdout)  # one JSON document: rank 1 printed nothing
    code, out, err = cli(*SWEEP, "--store", tmp_path / "one.db", "--json")
    assert code == 0, err
    rows1 = json.loads(out)
    assert [r["id"] for r in rows1] == [r["id"] for r in rows2]  # the process count is not in the identity
    for r1, r2 in zip(rows1, rows2):
        assert r1["results"] == r2["results"]  # bit for bit: the same batches, folded in the same order
        assert r2["provenance"]["processes"] == 2 and "processes" not in r1["provenance"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == ["one.db", "two.db"]


@pytest.mark.slow
def test_torchrun_fid_model_sample_and_resume_after_kill(tmp_path, env):
    fid = ["fid", "--model", "digits-edm", "--solver", "heun", "--nfe", "5", "--seeds", "0-79", "--batch", "16"]
    two, one = torchrun(env, tmp_path, *fid, "--json"), single(env, tmp_path, *fid, "--json")
    assert two.returncode == 0 and one.returncode == 0, two.stderr + one.stderr
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert a["fid"] == b["fid"] and a["blocks"] == b["blocks"] and b["samples"]["processes"] == 2
    # sample: the same .npz, byte for byte, and the same PNGs
    for out in ("s.npz", "png"):
        sample = ["sample", "digits-edm", "--nfe", "5", "--seeds", "0-39", "--batch", "8"]
        assert torchrun(env, tmp_path, *sample, "--out", f"two-{out}").returncode == 0
        assert single(env, tmp_path, *sample, "--out", f"one-{out}").returncode == 0
    assert (tmp_path / "two-s.npz").read_bytes() == (tmp_path / "one-s.npz").read_bytes()
    pngs = sorted(p.name for p in (tmp_path / "one-png").glob("*.png"))
    assert len(pngs) == 40 and pngs == sorted(p.name for p in (tmp_path / "two-png").glob("*.png"))
    assert all((tmp_path / "one-png" / n).read_bytes() == (tmp_path / "two-png" / n).read_bytes() for n in pngs)
    # kill a launch mid-cell (SIGTERM to torchrun, which stops both ranks) and launch it again
    args = ["sweep", TINY, "--solver", "heun", "--nfe", "35", "--seeds", "0-479", "--blocks", "4", "--batch", "8"]
    args += ["--checkpoint-every", "1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_port())]
    proc = subprocess.Popen(
        [*cmd, "-m", "diffbench", *args, "--store", "k.db"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    n_done, t0 = 0, time.time()
    while n_done == 0 and time.time() - t0 < 120 and proc.poll() is None:
        time.sleep(0.2)
        try:
            con = sqlite3.connect(tmp_path / "k.db", timeout=1)
            n_done = con.execute("SELECT max(n_done) FROM cells").fetchone()[0] or 0
            con.close()
        except sqlite3.Error:
            pass
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert 0 < n_done < 480
    resumed = torchrun(env, tmp_path, *args, "--store", "k.db", "--json")
    assert resumed.returncode == 0 and "resuming after" in resumed.stderr, resumed.stderr
    whole = single(env, tmp_path, *args, "--store", "w.db", "--json")
    assert json.loads(resumed.stdout)[0]["results"] == json.loads(whole.stdout)[0]["results"]


@pytest.mark.slow
def test_ranks_that_disagree_or_cannot_load_stop_before_any_work(tmp_path, env):
    r0, r1 = tmp_path / "r0", tmp_path / "r1"
    r0.mkdir(), r1.mkdir()
    for r in (r0, r1):  # a state dict and the sidecar naming its network
        (r / "m.json").write_bytes((BUILTIN / "digits-edm.json").read_bytes())
    (r0 / "m.pt").write_bytes((BUILTIN / "digits-edm.pt").read_bytes())
    args = ["sweep", "m.pt", "--solver", "heun", "--nfe", "5", "--seeds", "0-87", "--blocks", "4", "--store", "s.db"]

    def one_line(results):
        (c0, out0, err0), (c1, out1, err1) = results
        assert c0 == c1 != 0 and "Traceback" not in err0 + err1 and not err1.strip(), (err0, err1)
        lines = [ln for ln in err0.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err0
        assert not list(tmp_path.rglob("s.db*"))  # nothing written
        return lines[0]

    # rank 1 cannot load the model (m.pt is missing in its folder): one line from rank 0, no hang
    assert "rank 1, loading the model" in one_line(by_rank(env, [r0, r1], *args))
    # rank 1 holds another model file under the same name
    (r1 / "m.pt").write_bytes((BUILTIN / "digits-edm-early.pt").read_bytes())
    assert "model file (sha256)" in one_line(by_rank(env, [r0, r1], *args))
    # rank 1 was given other arguments
    (r1 / "m.pt").write_bytes((r0 / "m.pt").read_bytes())
    line = one_line(by_rank(env, [r0, r1], *args, extra=["--batch", "7"]))
    assert "disagree on the command" in line and "--batch 7" in line


def test_commands_that_do_not_share_work_are_refused_under_torchrun(tmp_path, monkeypatch, cli):
    from conftest import one_error_line

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, _, err = cli("stats", tmp_path / "imgs", "-o", tmp_path / "s.npz")
    assert code == 2 and "runs in one process" in one_error_line(code, err)
    (tmp_path / "imgs").mkdir()
    code, _, err = cli("fid", tmp_path / "imgs", "--ref", "digits-stats")
    assert code == 2 and "only with --model" in one_error_line(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]
