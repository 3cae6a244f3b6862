"""`diffbench sweep / report / compare` through the installed console script: end to end, kill -9 and resume,
the CI gate's exit codes, `fid --model` against a one-cell sweep, and every bad input as one line."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SMALL = "gmm:components=3,shape=2,cov=full,seed=1"  # 2 values per sample: cheap cells
TINY_IMG = "gmm:components=2,shape=1x2x2,seed=3"


def exe() -> str:
    path = shutil.which("diffbench") or str(Path(sys.executable).parent / "diffbench")
    assert Path(path).exists(), "the diffbench console script is not installed"
    return path


@pytest.fixture()
def env(tmp_path):
    e = dict(os.environ)
    e["DIFFBENCH_HOME"] = str(tmp_path / "home")
    e["TORCH_HOME"] = str(tmp_path / "torch")
    e["PYTHONPATH"] = str(tmp_path) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def run(env, *args, cwd=None, timeout=300):
    p = subprocess.run([exe(), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def one_line(code, err, *, exit_code=None):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if exit_code is not None:
        assert code == exit_code
    return lines[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sweep_report_compare_end_to_end(tmp_path, env):
    store, out = tmp_path / "s.db", tmp_path / "rep"
    args = ("sweep", SMALL, "--solver", "heun,dpmpp-2m", "--nfe", "4,5", "--seeds", "0-29", "--blocks", "3")
    code, stdout, err = run(env, *args, "--metric", "fd-exact,sw", "--store", store, "--out", out, "--device", "cpu")
    assert code == 0, err
    assert "NFE 4" in stdout and "NFE 5" in stdout and "heun edm at NFE 4: heun cannot spend exactly 4" in stdout
    # issue 20: the values are of all 30 samples, ± their jackknife interval over the 3 blocks
    flat = " ".join(stdout.split())  # rich wraps the caption
    assert "95% jackknife interval over 3 blocks of the sw of all 30" in flat
    assert "paired 95% jackknife interval" in stdout
    for f in ("fd-exact.md", "fd-exact.csv", "fd-exact.json", "fd-exact.tex", "sw.png", "sw.svg", "results.json"):
        assert (out / f).stat().st_size > 0
    # report regenerates the tables from the store alone
    code, text, err = run(env, "report", store, "--format", "csv", "--metric", "sw")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert code == 0 and len(rows) == 4 and {r["metric"] for r in rows} == {"sw"}, err
    exported = json.loads((out / "results.json").read_text())
    want = {(c["config"], c["nfe_requested"]): c["results"]["sw"]["value"] for c in exported["cells"] if c["results"]}
    assert {(r["config"], int(r["nfe"])): float(r["value"]) for r in rows if r["value"]} == want
    # the estimate at infinite n: not in the terminal tables by default, in the exports, and on request
    assert "fd-exact-inf" not in stdout and (out / "fd-exact-inf.md").exists()
    code, text, err = run(env, "report", store, "--format", "csv", "--metric", "fd-exact-inf")
    inf = {
        (c["config"], c["nfe_requested"]): c["results"]["fd-exact"]["inf"] for c in exported["cells"] if c["results"]
    }
    rows = list(csv.DictReader(io.StringIO(text)))
    assert code == 0 and {(r["config"], int(r["nfe"])): float(r["value"]) for r in rows if r["value"]} == inf, err
    # compare: identical -> 0; one cell clearly worse -> 1; different cells or a missing file -> 2
    base = out / "results.json"
    code, text, err = run(env, "compare", store, base, "--tolerance", "2%")
    assert code == 0 and "no regression" in text, err
    worse = json.loads(base.read_text())
    cell = next(c for c in worse["cells"] if c["status"] == "done" and c["config"] == "dpmpp-2m edm")
    r = cell["results"]["sw"]
    r["loo"] = [v * 1.5 for v in r["loo"]]
    r["value"] *= 1.5
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    code, text, err = run(env, "compare", tmp_path / "worse.json", base, "--tolerance", "2%")
    assert code == 1 and "REGRESSION" in text and "1 regression(s)" in text, (text, err)
    fewer = json.loads(base.read_text())
    fewer["cells"] = [c for c in fewer["cells"] if c is not None and c["id"] != cell["id"]]
    (tmp_path / "fewer.json").write_text(json.dumps(fewer))
    line = one_line(*run(env, "compare", tmp_path / "fewer.json", base)[::2], exit_code=2)
    assert "baseline cell(s) missing from NEW: 'dpmpp-2m edm' at NFE" in line

    # the same command again, with a churn axis: finished cells come from the store, and dpmpp-2m, which takes
    # no churn, runs once without it (the same spec as before: both its cells come from the store)
    code, text, err = run(env, *args, "--churn", "0,40", "--metric", "fd-exact,sw", "--store", store, "--device", "cpu")
    assert code == 0 and err.count("already in the store") == 2 and "dpmpp-2m edm NFE 5: already" in err
    assert "not applicable: --churn does not apply to dpmpp-2m: it ran once without it" in text
    assert "dpmpp-2m edm churn" not in text + err


def _progress(store: Path) -> tuple[int, int] | None:
    """(cells done, seeds finished in running cells) read from a live store, or None."""
    try:
        con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=0.5)
        rows = con.execute("SELECT status, n_done FROM cells").fetchall()
        con.close()
    except sqlite3.Error:
        return None
    return sum(s == "done" for s, _ in rows), sum(n for s, n in rows if s == "running")


def _results(cells) -> dict[str, dict]:
    out = {}
    for c in cells:
        if c["status"] == "done":
            res = json.loads(json.dumps(c["results"]))
            res.get("ref-error", {}).pop("cached", None)  # cache hits differ between runs, the numbers do not
            out[c["id"]] = res
    return out


@pytest.mark.slow
def test_kill_9_at_several_moments_then_resume_gives_identical_numbers(tmp_path, env):
    from diffbench.models.analytic import load_builtin
    from diffbench.sweep.cell import prepare
    from diffbench.sweep.grid import make_grid
    from diffbench.sweep.runner import run_sweep
    from diffbench.sweep.store import Store, load_cells

    store = tmp_path / "s.db"
    args = ["sweep", SMALL, "--solver", "heun,euler", "--nfe", "9,15", "--seeds", "0-179", "--blocks", "3"]
    args += ["--batch", "6", "--metric", "fd-exact,sw,ref-error", "--store", str(store), "--device", "cpu"]
    moments = [  # kill when: the first checkpoint exists; mid second cell; late in the third cell
        lambda done, part: part >= 6,
        lambda done, part: done >= 1 and part >= 60,
        lambda done, part: done >= 2 and part >= 150,
    ]
    seen_done: dict[str, dict] = {}
    for i, when in enumerate(moments):
        proc = subprocess.Popen([exe(), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            p = _progress(store)
            if p is not None and when(*p):
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the sweep ended before kill {i + 1}: {proc.stderr.read()}"
        if i == 0:  # a second sweep on the same store while this one runs: one line, nothing touched
            code, _, err = run(env, *args)
            assert "is in use by another running sweep (pid" in one_line(code, err)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        now = _results(load_cells(store))
        assert all(now[k] == v for k, v in seen_done.items())  # nothing finished is lost or changed
        seen_done = now
    code, _, err = run(env, *args)
    assert code == 0 and "resuming after" in err, err
    resumed = _results(load_cells(store))
    # the uninterrupted run, in-process
    model = load_builtin(SMALL)
    bench = prepare(model, seeds=range(180), metrics=["fd-exact", "sw", "ref-error"], blocks=3, batch=6, device="cpu")
    with Store(tmp_path / "clean.db") as st:
        run_sweep(bench, make_grid(model, {"solver": ["heun", "euler"], "nfe": [9, 15]}), st)
        clean = _results(st.cells())
    assert len(clean) == 4 and resumed == clean


def test_fid_model_equals_one_cell_sweep(tmp_path, env):
    import numpy as np

    (tmp_path / "extmod_sweep.py").write_text(
        textwrap.dedent(
            """
            import torch

            class Proj:
                id = "proj4"

                def __init__(self):
                    self.w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))

                def features(self, x):
                    return (x.float() / 255).flatten(1) @ self.w

            def make(device="cpu"):
                return Proj()
            """
        )
    )
    refimgs = np.random.default_rng(1).integers(0, 256, (40, 2, 2, 1), dtype=np.uint8)
    np.savez(tmp_path / "refimgs.npz", images=refimgs)
    ext = ("--extractor", "extmod_sweep:make")
    code, _, err = run(env, "stats", tmp_path / "refimgs.npz", "-o", tmp_path / "ref.npz", *ext)
    assert code == 0, err
    spec = ("--solver", "euler", "--nfe", "4", "--seeds", "0-29", "--blocks", "15", "--device", "cpu")
    code, out, err = run(env, "fid", "--model", TINY_IMG, *spec, "--ref", tmp_path / "ref.npz", *ext, "--json")
    assert code == 0, err
    fid = json.loads(out)
    code, out, err = run(
        env,
        "sweep",
        TINY_IMG,
        *spec,
        "--ref",
        tmp_path / "ref.npz",
        *ext,
        "--metric",
        "fd",
        "--store",
        tmp_path / "s.db",
        "--json",
    )
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["results"]["fd"]["value"] == fid["fid"] and fid["n"] == 30 and fid["fid"] > 0
    assert row["results"]["fd"]["loo"] == fid["loo"] and fid["block_n"] == 2


def test_bad_input_is_one_line_and_nothing_is_lost(tmp_path, env, cli, monkeypatch):
    """The first sweep and the first refusal through the installed script; the other refusals and reports
    in-process (the same main(); a fresh interpreter with torch costs ~3 s of CPU per call)."""
    monkeypatch.setenv("DIFFBENCH_HOME", env["DIFFBENCH_HOME"])
    monkeypatch.setenv("TORCH_HOME", env["TORCH_HOME"])

    def inproc(_env, *args):
        return cli(*map(str, args))

    store = tmp_path / "s.db"
    base = ("sweep", SMALL, "--seeds", "0-11", "--metric", "sw", "--device", "cpu", "--store", store)
    code, _, err = run(env, *base, "--solver", "heun", "--nfe", "9")
    assert code == 0, err
    before = inproc(env, "report", store, "--format", "json", "--metric", "sw")[1]
    cases = [
        (("--solver", "heun", "--nfe", "4,6"), "every cell of the grid was skipped: heun cannot spend exactly"),
        (("--solver", "heun", "--churn", "-1,40", "--nfe", "9"), "--churn must be >= 0, got -1.0"),
        (("--solver", "heun,hune", "--nfe", "9"), "unknown solver 'hune'"),
    ]
    for k, (extra, message) in enumerate(cases):
        assert message in one_line(*(run if k == 0 else inproc)(env, *base, *extra)[::2]), extra
    # seed blocks (issue 20): more blocks than seeds; no divisor of N near 20 and no --blocks (never drop seeds)
    line = one_line(*inproc(env, *base, "--solver", "heun", "--nfe", "9", "--blocks", "13")[::2])
    assert "--blocks 13 is larger than the 12 seeds: at most 12" in line
    many = ("sweep", SMALL, "--seeds", "0-40", "--metric", "sw", "--solver", "heun", "--nfe", "9", "--store", store)
    line = one_line(*inproc(env, *many)[::2])
    assert "41 seeds have no divisor between 10 and 40" in line and "pass --blocks" in line
    # results stored before the jackknife (no leave-one-out values): read, their value of all N shown, marked
    code, _, err = inproc(env, "report", store, "--out", tmp_path / "rep", "--no-plot")
    assert code == 0, err
    old = json.loads((tmp_path / "rep" / "results.json").read_text())
    for c in old["cells"]:
        for r in (c.get("results") or {}).values():
            r.pop("loo", None), r.pop("interval", None)
    (tmp_path / "old.json").write_text(json.dumps(old))
    code, text, err = inproc(env, "report", tmp_path / "old.json", "--format", "md", "--metric", "sw")
    assert code == 0 and "[1] stored before the jackknife: value = the metric of all N as stored" in text, err
    # a store of another schema version: refused, untouched
    old = tmp_path / "old.db"
    con = sqlite3.connect(old)
    con.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT); INSERT INTO meta VALUES ('schema_version', '99');"
    )
    con.commit()
    con.close()
    digest = sha(old)
    line = one_line(*inproc(env, "sweep", SMALL, "--nfe", "9", "--store", old)[::2])
    assert "written with results-store schema 99; this diffbench reads schema 1" in line and sha(old) == digest
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    line = one_line(*inproc(env, "sweep", SMALL, "--nfe", "9", "--store", notes)[::2])
    assert "not a diffbench results store" in line and notes.read_text() == "my notes\n"
    # the first store still holds its finished cell, unchanged by the failed runs above
    code, text, err = inproc(env, "report", store, "--format", "json", "--metric", "sw")
    first = json.loads(before)["rows"][0]
    assert code == 0 and json.loads(text)["rows"][0] == first and first["cells"]["9"]["value"] is not None, err


@pytest.mark.slow
def test_design_card_example_runs_with_no_other_arguments(tmp_path, env):
    """`diffbench sweep --nfe 18,35,79`: the default model (digits-edm, fd in the digits feature space), seeds
    and metrics; Heun cannot take 18 (skipped)."""
    code, out, err = run(env, "sweep", "--nfe", "18,35,79", cwd=tmp_path, timeout=1800)
    assert code == 0, err
    assert "fd by NFE" in out and "NFE 35" in out and "NFE 79" in out and "on digits-edm" in err
    assert "heun edm at NFE 18: heun cannot spend exactly 18 NFE" in out
    assert (tmp_path / "diffbench-sweep.db").is_file()
