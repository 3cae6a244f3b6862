"""Cell identity (diffbench.sweep.identity): built from what ran (the planned sigmas, the files read), not from
how the cell was named; the stale-grid case of issue 19 §1 through the real `diffbench sweep` command."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffbench.metrics.stats import Statistics
from diffbench.sampling.run import plan_spec
from diffbench.sampling.spec import SamplerSpec
from diffbench.sweep.bench import prepare
from diffbench.sweep.identity import cell_identity, files_read, sigma_grid

TINY = "gmm:components=2,shape=1x2x2,seed=3"
BIN = Path(sys.executable).parent / "diffbench"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFBENCH_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tiny():
    from diffbench.models.analytic import load_builtin

    return load_builtin(TINY)


def bench_of(model, **kw):
    return prepare(model, seeds=range(8), metrics=kw.pop("metrics", ["fd-exact", "sw"]), device="cpu", **kw)


def ident(bench, spec, model):
    return cell_identity(bench, spec, plan_spec(model, spec))


def test_the_identity_holds_the_planned_sigmas_exactly(tiny):
    spec = SamplerSpec.make(solver="euler", nfe=5)
    cid, identity = ident(bench_of(tiny), spec, tiny)
    plan = plan_spec(tiny, spec)
    assert identity["sigmas"] == [float(s).hex() for s in plan.sigmas]
    assert [float.fromhex(h) for h in identity["sigmas"]] == plan.sigmas.tolist()
    assert identity["files_read"] == {"model": bench_of(tiny).model_sha256}
    # one ulp in one sigma is another cell
    nudged = plan.sigmas.clone()
    nudged[1] = np.nextafter(float(nudged[1]), 0.0)
    assert sigma_grid(nudged) != identity["sigmas"]
    assert cid != cell_identity(bench_of(tiny), spec, dataclasses.replace(plan, sigmas=nudged))[0]


def test_reordering_equal_options_keeps_the_identity(tiny):
    a = SamplerSpec.make(solver="heun", nfe=7, schedule="edm", rho=7.0, endpoint="edm")
    b = SamplerSpec.make(endpoint="edm", rho=7, schedule="edm", nfe=7, solver="heun")
    one, two = bench_of(tiny, metrics=["fd-exact", "sw"]), bench_of(tiny, metrics=["sw", "fd-exact"])
    assert ident(one, a, tiny)[0] == ident(two, b, tiny)[0]


def test_editing_a_grid_file_changes_the_identity(tiny, tmp_path):
    grid = tmp_path / "grid.txt"
    grid.write_text("80\n10\n1\n0.1\n0.002\n")
    spec = SamplerSpec.make(solver="euler", schedule=f"file:{grid}", nfe=5)
    bench = bench_of(tiny)
    before, ib = ident(bench, spec, tiny)
    assert set(ib["files_read"]) == {"model", "schedule"}
    grid.write_text("80\n20\n2\n0.2\n0.002\n")
    after, ia = ident(bench, spec, tiny)
    assert after != before and ia["sigmas"] != ib["sigmas"] and ia["files_read"] != ib["files_read"]
    # the same path and sigmas, but other bytes read (a comment): another file was read, so another cell
    grid.write_text("# edited\n80\n20\n2\n0.2\n0.002\n")
    assert ident(bench, spec, tiny)[0] not in (before, after)


def test_a_changed_file_in_another_role_changes_the_identity(tiny):
    spec = SamplerSpec.make(solver="euler", nfe=5)
    bench = bench_of(tiny)
    base = ident(bench, spec, tiny)[0]
    other_model = dataclasses.replace(bench, model_sha256="0" * 64)
    assert ident(other_model, spec, tiny)[0] != base
    stats = Statistics(mu=np.zeros(2), sigma=np.eye(2), n=10, extractor_id=None, file_sha256="a" * 64)
    with_ref = dataclasses.replace(bench, ref=stats)
    assert files_read(with_ref, spec)["reference"] == "a" * 64
    other_ref = dataclasses.replace(bench, ref=dataclasses.replace(stats, file_sha256="b" * 64))
    ids = {base, ident(with_ref, spec, tiny)[0], ident(other_ref, spec, tiny)[0]}
    assert len(ids) == 3


def test_a_rerun_after_editing_the_grid_file_gives_the_fresh_number(tmp_path):
    """Issue 19 §1 as a user meets it: same command, edited grid.txt -> a new FD, not the stored one."""
    env = {**os.environ, "DIFFBENCH_HOME": str(tmp_path / "home"), "NO_COLOR": "1", "COLUMNS": "200"}
    grid = tmp_path / "grid.txt"
    cmd = [str(BIN), "sweep", "digits-edm", "--solver", "euler", "--schedule", "file:grid.txt", "--nfe", "6"]
    cmd += ["--seeds", "0-99", "--blocks", "1", "--store", "g.db", "--no-plot"]

    def run() -> str:
        p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr
        return p.stdout + p.stderr

    def fd(out: str) -> float:
        found = re.search(r"endpoint edm\s*\W\s*([0-9.]+)", out)
        assert found is not None, out
        return float(found.group(1))

    grid.write_text("80\n10\n2\n0.5\n0.1\n0.002\n")
    first = run()
    assert "already in the store" not in first
    grid.write_text("80\n20\n5\n1\n0.2\n0.002\n")
    second = run()
    assert "already in the store" not in second
    assert fd(second) != fd(first)


def test_options_left_unset_are_not_in_the_identity_so_new_options_keep_old_ids(tiny):
    # a new SamplerSpec option defaults to None: cells that do not use it keep their ids (and CI baselines match)
    spec = SamplerSpec.make(solver="euler", nfe=5)
    _, identity = ident(bench_of(tiny), spec, tiny)
    assert all(v is not None for v in identity["spec"].values())
    assert "guidance" not in identity["spec"] and identity["spec"]["solver"] == "euler"
    guided = ident(bench_of(tiny), SamplerSpec.make(solver="euler", nfe=5, S_churn=1.0), tiny)[1]
    assert guided["spec"]["S_churn"] == 1.0
