"""The error decomposed per cell (issue 23): ref-fd (the FD of the reference ODE solution from the same
latents), the gap FD − ref-fd, and `diffbench report --errors [--score-data]`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import one_error_line

from diffbench.errors import ConfigError
from diffbench.models.builtin import digits_data
from diffbench.sampling.spec import SamplerSpec

REF_STEPS = 16  # Heun intervals of the reference: a Heun cell on 33 sigmas of the same rho=7 grid IS the reference
SEEDS = range(40)  # 2 blocks (paired jackknife); FD at n < 64 feature dims: allow_small_n


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """A heun cell that reproduces the reference, Euler at NFE 4 and 16, and a stochastic cell, on digits-edm."""
    from diffbench.models.builtin import builtin_dir
    from diffbench.sweep.bench import prepare
    from diffbench.sweep.cell import run_cell

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFBENCH_HOME", str(tmp_path_factory.mktemp("home")))
        bench = prepare(
            "digits-edm",
            seeds=SEEDS,
            metrics=["fd", "ref-fd", "ref-error"],
            blocks=2,
            batch=130,
            device="cpu",
            ref=builtin_dir() / "digits-stats-train.npz",
            extractor="digits",
            ref_steps=REF_STEPS,
            allow_small_n=True,
        )
        specs = {
            "heun": SamplerSpec.make(solver="heun", steps=REF_STEPS + 1, schedule="edm", rho=7.0),
            "euler4": SamplerSpec.make(solver="euler", nfe=4),
            "euler16": SamplerSpec.make(solver="euler", nfe=16),
            "ancestral": SamplerSpec.make(solver="euler-ancestral", nfe=4),
        }
        return {k: run_cell(bench, s).metrics for k, s in specs.items()}


def test_ref_fd_of_the_reference_itself_is_the_cells_fd(cells):
    m = cells["heun"]
    assert m["ref-error"]["value"] < 1e-4  # the same computation, float32 against float64
    assert m["ref-fd"]["value"] == pytest.approx(m["fd"]["value"], rel=2e-3)
    assert m["ref-fd"]["reference"] == f"heun {REF_STEPS} steps, rho 7" and len(m["ref-fd"]["loo"]) == 2
    assert "inf" in m["ref-fd"]  # the jackknife estimate at infinite n, as fd
    # every cell on the same sigma range shares the reference: one ref-fd for all
    assert cells["euler4"]["ref-fd"]["value"] == m["ref-fd"]["value"] == cells["euler16"]["ref-fd"]["value"]


def test_the_gap_shrinks_as_nfe_grows(cells):
    gap = {k: cells[k]["fd"]["value"] - cells[k]["ref-fd"]["value"] for k in ("euler4", "euler16", "heun")}
    assert abs(gap["euler16"]) < abs(gap["euler4"]) / 3 and abs(gap["heun"]) < abs(gap["euler16"])
    assert cells["euler16"]["ref-error"]["value"] < cells["euler4"]["ref-error"]["value"] / 2


def test_stochastic_cells_have_no_reference_fd(cells):
    r = cells["ancestral"]["ref-fd"]
    assert r["value"] is None and "deterministic" in r["note"] and cells["ancestral"]["fd"]["value"] > 0


def test_ref_fd_needs_a_reference_and_leaves_other_ids_alone():
    from diffbench.sweep.bench import prepare
    from diffbench.sweep.identity import cell_identity

    with pytest.raises(ConfigError, match="ref-fd needs reference statistics"):
        prepare("digits-edm", seeds=range(4), metrics=["ref-fd"], device="cpu", extractor="digits")
    spec = SamplerSpec.make(solver="euler", nfe=4)
    plain = prepare("digits-edm", seeds=range(4), metrics=["ref-error"], device="cpu")
    longer = prepare("digits-edm", seeds=range(4), metrics=["ref-error"], device="cpu", ref_steps=64)
    assert cell_identity(plain, spec, None)[1]["metric_options"] == {"ref_steps": 1024}
    assert cell_identity(plain, spec, None)[0] != cell_identity(longer, spec, None)[0]


def test_report_errors_through_the_command(cli, tmp_path, home):
    db = tmp_path / "s.db"
    run = ("sweep", "digits-edm", "--solver", "euler,euler-ancestral", "--nfe", "4", "--seeds", "0-39")
    run += ("--blocks", "2", "--device", "cpu", "--allow-small-n")
    code, _, err = cli(*run, "--metric", "fd,ref-fd,ref-error,prior-kl", "--ref-steps", "8", "--store", str(db))
    assert code == 0, err
    code, out, err = cli("report", str(db), "--errors", "--format", "json")
    assert code == 0, err
    rows = {r["config"]: r for r in json.loads(out)["rows"]}
    euler, anc = rows["euler edm"], rows["euler-ancestral edm"]
    assert euler["gap"]["value"] == pytest.approx(euler["fd"]["value"] - euler["ref_fd"]["value"])
    assert euler["gap"]["ci_low"] < euler["gap"]["value"] < euler["gap"]["ci_high"]
    assert euler["ref_error"]["value"] > 0 and euler["prior_kl"] is not None
    assert anc["gap"] is None and anc["ref_fd"] is None and anc["note"].startswith("n/a")
    held = tmp_path / "held.npz"  # 16 held-out digits: the training error's source, small to stay fast
    np.savez(held, x=digits_data().split("heldout")[0][:16].transpose(0, 2, 3, 1))
    code, out, err = cli("report", str(db), "--errors", "--score-data", str(held), "--out", tmp_path / "o")
    assert code == 0, err
    assert "euler-ancestral" in out and "stochastic" in out and "(16 images x 4 draws" in out
    assert "training error of digits-edm: EDM-weighted held-out loss" in out
    assert {p.name for p in (tmp_path / "o").iterdir()} == {"errors.md", "errors.csv", "errors.json"}
    assert "| euler edm | 4 |" in (tmp_path / "o" / "errors.md").read_text()
    # bad input: one line each, non-zero exit, nothing run
    plain = tmp_path / "plain.json"
    code, _, err = cli(
        "sweep",
        "digits-edm",
        "--solver",
        "euler",
        "--nfe",
        "1",
        "--seeds",
        "0-3",
        "--device",
        "cpu",
        "--metric",
        "ref-error",
        "--ref-steps",
        "2",
        "--store",
        str(tmp_path / "p.db"),
    )
    assert code == 0, err
    cli("report", str(tmp_path / "p.db"), "--out", tmp_path / "p", "--no-plot")
    (tmp_path / "p" / "results.json").rename(plain)
    for args, expect in [
        ((plain, "--errors"), "--errors needs cells that measured ref-fd"),
        ((db, "--score-data", "digits:heldout"), "--score-data goes with --errors"),
        ((db, "--errors", "--format", "tex"), "--errors format"),
        ((db, "--errors", "--floor"), "--floor do not apply"),
        ((db, "--errors", "--score-data", "digits:nope"), "unknown digits split 'nope'"),
    ]:
        code, _, err = cli("report", *map(str, args))
        assert expect in one_error_line(code, err), err
    code, _, err = cli(*run, "--metric", "fd", "--ref-steps", "8", "--store", str(tmp_path / "q.db"))
    assert "--ref-steps sets the reference ODE solution" in one_error_line(code, err, context=True)
