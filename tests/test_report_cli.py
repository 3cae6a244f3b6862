"""`diffbench sweep/report --x AXIS --series AXIS,...` through the installed console script: any swept axis as
the columns, bad axes as one error line before any cell runs or any file is written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = "gmm:components=3,shape=2,cov=full,seed=1"  # 2 values per sample: cheap cells


def run(tmp_path, *args):
    exe = shutil.which("diffbench") or str(Path(sys.executable).parent / "diffbench")
    env = {**os.environ, "DIFFBENCH_HOME": str(tmp_path / "home")}
    p = subprocess.run([exe, *map(str, args)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    return p.returncode, p.stdout, p.stderr


def error_line(code, err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0 and "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One churn x solver x NFE sweep laid out by churn, its store and output folder."""
    tmp = tmp_path_factory.mktemp("axes")
    args = ("sweep", SMALL, "--solver", "heun,euler", "--churn", "0,10", "--nfe", "5,9", "--seeds", "0-29")
    code, out, err = run(
        tmp, *args, "--blocks", "3", "--metric", "sw", "--store", tmp / "s.db", "--out", tmp / "rep",
        "--device", "cpu", "--x", "churn", "--series", "solver,nfe",
    )  # fmt: skip
    assert code == 0, err
    return tmp, out


def test_sweep_lays_out_the_axis_asked_for(swept):
    tmp, out = swept
    assert "sw by churn" in out and "churn 0" in out and "churn 10" in out
    for row in ("heun NFE 5", "heun NFE 9", "euler NFE 5", "euler NFE 9"):
        assert f"│ {row} " in out
    assert "churn 10 at NFE 9: heun NFE 9 − euler NFE 9" in out or "churn 10 at NFE 9: euler NFE 9 − heun" in out
    md = (tmp / "rep" / "sw.md").read_text()
    assert "| config | convention | churn 0 | churn 10 |" in md
    assert (tmp / "rep" / "sw.png").stat().st_size > 1000


def test_report_lays_out_a_store_again_by_any_axis(swept):
    tmp, _ = swept
    code, out, err = run(tmp, "report", tmp / "s.db", "--x", "solver", "--series", "churn,nfe", "--format", "csv")
    assert code == 0, err
    head, *rows = out.splitlines()
    assert head.startswith("metric,config,convention,solver,nfe,") and len(rows) == 8
    assert rows[0].startswith("sw,churn=0 NFE 5,endpoint edm,heun,5,5,")
    # the default layout is the one before --x existed: configurations by NFE
    code, out, err = run(tmp, "report", tmp / "s.db")
    assert code == 0 and "sw by NFE" in out and "│ heun edm churn=10 " in out, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--x", "rho"),
            "error: --x rho: not an axis that varies across these cells; axes that vary: nfe, solver, churn",
        ),
        (("--series", "solver"), "error: --series solver leaves churn varying within a line; add it"),
        (("--x", "churn", "--series", "churn"), "error: --series churn: churn is already the x axis (--x churn)"),
    ],
)
def test_report_refuses_a_bad_axis_in_one_line(swept, args, message):
    tmp, _ = swept
    out = tmp / f"bad{len(args)}"
    line = error_line(*run(tmp, "report", tmp / "s.db", *args, "--out", out)[::2])
    assert line.startswith(message)
    assert not out.exists() or not list(out.iterdir())


def test_sweep_refuses_a_bad_axis_before_any_cell_runs(tmp_path):
    store = tmp_path / "s.db"
    args = ("sweep", SMALL, "--solver", "heun,euler", "--nfe", "5,9", "--seeds", "0-29", "--store", store)
    line = error_line(*run(tmp_path, *args, "--metric", "sw", "--x", "churn")[::2])
    assert line == "error: --x churn: not an axis that varies across these cells; axes that vary: nfe, solver"
    import sqlite3

    if store.exists():  # the store may be created; no cell was computed into it
        assert sqlite3.connect(store).execute("SELECT count(*) FROM cells").fetchone()[0] == 0


def test_report_without_matplotlib_writes_the_tables_and_says_what_it_skipped(swept, tmp_path):
    tmp, _ = swept
    fake = tmp_path / "no_mpl" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    exe = shutil.which("diffbench") or str(Path(sys.executable).parent / "diffbench")
    env = {**os.environ, "DIFFBENCH_HOME": str(tmp / "home")}
    env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), env.get("PYTHONPATH", "")])
    out = tmp_path / "rep"
    p = subprocess.run(
        [exe, "report", tmp / "s.db", "--out", out, "--x", "churn", "--series", "solver,nfe"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "skipped plot of sw: plots need matplotlib" in p.stderr and "wrote 5 files" in p.stderr
    names = ["results.json", "sw.csv", "sw.json", "sw.md", "sw.tex"]
    assert sorted(f.name for f in out.iterdir()) == [".diffbench-store", *names]  # marked as the store's
    assert "sw by churn" in p.stdout


def test_columns_of_one_cell_are_not_starred_and_are_paired_along_the_row(tmp_path):
    """The README's guidance example, small: with --x guidance each column holds one cell, so no column is
    marked best, and the paired lines compare each guidance weight with the first along the row (sweep and
    report print the same; the Markdown export carries them)."""
    cond = SMALL + ",cond=1"
    args = ("--solver", "dpmpp-2m", "--guidance", "1,2,4", "--nfe", "8", "--seeds", "0-39", "--blocks", "4")
    code, out, err = run(
        tmp_path, "sweep", cond, *args, "--metric", "sw", "--x", "guidance", "--store", tmp_path / "g.db",
        "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert "sw by guidance (lower is better; ± is" in out and "best per column" not in out and " * " not in out
    for w in (2, 4):
        assert f"dpmpp-2m edm: guidance {w} − guidance 1 = " in out and "over 4 blocks" in out, out
    code, rep, err = run(tmp_path, "report", tmp_path / "g.db", "--x", "guidance", "--out", tmp_path / "r", "--no-plot")
    assert code == 0, err
    assert [ln for ln in rep.splitlines() if " − " in ln] == [ln for ln in out.splitlines() if " − " in ln]
    md = (tmp_path / "r" / "sw.md").read_text()
    assert "along each row against its first guidance value" in md and "**" not in md.split("\n", 1)[1]
    assert "- dpmpp-2m edm: guidance 4 − guidance 1 = " in md
    # the NFE layout of the same store: one column, three cells: the best is marked and the others paired to it
    code, out, err = run(tmp_path, "report", tmp_path / "g.db")
    assert code == 0 and "best per column marked" in out and " * " in out and out.count("NFE 8: ") == 2, out
