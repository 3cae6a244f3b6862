"""Sweep outputs and stores that never surprise, and axes that mean what they say (issue 18): refused commands leave
nothing behind, outputs belong to their store, damaged stores are one line (exit 2 in `compare`), exports are
standard JSON, usage errors exit 2, churn values that are one sampler are noted, options crossed with solvers that
do not take them run once, and `compare` of an extended sweep passes while a missing baseline cell or other seeds
are reported as such. The refusals, the damaged stores, the outputs' names, the extended compare and the churn
test's report and rerun run `diffbench`
in-process (`inproc`, the same main() the console script calls, in the test's own working directory and
DIFFBENCH_HOME): what they check is the command's behaviour, not the process boundary, and a fresh interpreter with
torch costs ~3 s of CPU per call. test_cli_sweep.py runs sweep, report and compare through the installed script; so
do the churn and TOML tests and a refusal here."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import test_cli_sweep
from test_cli_sweep import SMALL, one_line, run

env = test_cli_sweep.env  # the fixture: a DIFFBENCH_HOME of the test's own

# The README's sweep TOML example, verbatim: the test below parses it and runs it.
README_TOML = """\
# sweep.toml: run with  diffbench sweep --config sweep.toml  (options given on the command line win)
model = "gmm"                  # any MODEL the command takes
seeds = "0-399"                # shared by every cell; 2 paired blocks of 200 (fd-exact needs n > 192 dims)
blocks = 2
metrics = ["fd-exact", "sw"]   # or a comma string, as --metric takes
store = "gmm-churn.db"
out = "gmm-churn"              # tables, plots, results.json

[axes]                         # every combination runs; keys are flag names (churn, nfe-policy) or Python keywords
solver = ["heun", "dpmpp-2m"]
nfe = [5, 9, 19]
churn = [0, 10]                # dpmpp-2m takes no churn: it runs once, listed as not applicable

[fixed]                        # one value for every cell
sigma_min = 0.002
sigma_max = 80.0

[[cell]]                       # overrides in order: `where` picks cells (it must match one), `set` changes them
where = { solver = "dpmpp-2m" }
set = { schedule = "logsnr" }

[[cell]]
where = { solver = "heun", churn = 10 }
set = { s-noise = 1.007 }      # EDM's S_noise for its stochastic sampler
"""

QUICK = ("--seeds", "0-11", "--metric", "sw", "--device", "cpu")


@pytest.fixture()
def inproc(cli, env, monkeypatch):
    """`run` of test_cli_sweep in-process: (env, *args, cwd=None) -> (exit code, stdout, stderr)."""
    monkeypatch.setenv("DIFFBENCH_HOME", env["DIFFBENCH_HOME"])
    monkeypatch.setenv("TORCH_HOME", env["TORCH_HOME"])

    def run_(_env, *args, cwd=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        return cli(*map(str, args))

    return run_


def strict_json(text: str):
    """Parse as standard JSON: NaN / Infinity tokens are refused."""

    def refuse(token: str):
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_refused_sweeps_leave_nothing_behind_and_usage_errors_exit_2(tmp_path, env, inproc):
    work = tmp_path / "w"
    work.mkdir()
    (work / "afile").write_text("mine\n")
    toml = work / "bad.toml"
    toml.write_text(
        '[axes]\nsolver = ["heun"]\nnfe = [9]\n[[cell]]\nwhere = { solver = "dpmpp2m" }\nset = { rho = 5 }\n'
    )
    before = listing(work)
    store = ("--store", "s.db")
    cases = [  # (arguments, text of the one line, exit code or None for any non-zero)
        (("sweep", SMALL, "--solver", "heun,dpmpp2m", "--nfe", "9", *QUICK, *store), "unknown solver 'dpmpp2m'", 2),
        (("sweep", "nosuchmodel", *store), "unknown model 'nosuchmodel'", 2),
        (("sweep", SMALL, "--seeds", "", "--nfe", "9", *store), "seed list", 2),
        (("sweep", SMALL, "--nfe", "0", *store), "--nfe must be >= 1", 2),
        (("sample", SMALL, "--nfe", "0", "--out", "x.npz"), "--nfe", 2),
        (("sweep", SMALL, "--nfe", "9", *QUICK, "--config", toml.name, *store), "matches no cell", 2),
        (("sweep", SMALL, "--nfe", "9", *QUICK, "--store", "/proc/nope.db"), "--store /proc/nope.db", None),
        (("sweep", SMALL, "--nfe", "9", *QUICK, *store, "--out", "/proc/nope"), "--out /proc/nope", None),
        (("sweep", SMALL, "--nfe", "9", *QUICK, *store, "--out", "afile"), "--out afile is a file", None),
        (("sweep", SMALL, "--nfe", "9", *QUICK, "--store", "afile"), "not a diffbench results store", None),
    ]
    for args, needle, code in cases:
        line = one_line(*inproc(env, *args, cwd=work)[::2], exit_code=code)
        assert needle in line, (args, line)
        assert listing(work) == before, (args, listing(work))  # no .db, no .lock, no output folder
    # "did you mean" stays short: the closest names and how to list them all
    line = one_line(*run(env, "sweep", "digits-edn", cwd=work)[::2], exit_code=2)  # the installed script
    assert "Did you mean 'digits-edm'" in line and "diffbench checkpoints list" in line and len(line) < 250
    assert (work / "afile").read_text() == "mine\n"


def test_outputs_are_named_after_their_store_and_never_overwrite_another_stores(tmp_path, env, inproc):
    args = ("sweep", "--solver", "euler", "--nfe", "3", "--seeds", "0-69", "--device", "cpu")
    code, out, err = inproc(env, *args, "--store", "b4.db", cwd=tmp_path)
    assert code == 0, err
    # fd and fd-inf (the estimate at infinite n, exports only) in 4 formats and 2 plots each, and results.json
    assert "outputs go to b4/, named after the store" in err and "wrote 13 files to b4" in err
    assert {"results.json", "fd.md", "fd.json", ".diffbench-store"} <= set(listing(tmp_path / "b4"))
    results = strict_json((tmp_path / "b4" / "results.json").read_text())
    assert results["store"] == str((tmp_path / "b4.db").resolve())
    strict_json((tmp_path / "b4" / "fd.json").read_text())
    # another store's run into that folder is refused before anything is created; --overwrite replaces it
    line = one_line(*inproc(env, *args, "--store", "b5.db", "--out", "b4", cwd=tmp_path)[::2])
    assert "b4 holds the outputs of another store" in line and "--overwrite" in line
    assert not (tmp_path / "b5.db").exists() and not (tmp_path / "b5.db.lock").exists()
    code, _, err = inproc(env, *args, "--store", "b5.db", "--out", "b4", "--overwrite", cwd=tmp_path)
    assert code == 0, err
    owner = strict_json((tmp_path / "b4" / ".diffbench-store").read_text())
    assert owner["store"] == str((tmp_path / "b5.db").resolve()) and "results.json" in owner["files"]
    # the same store again writes into its own folder without --overwrite; the first store no longer may
    code, _, err = inproc(env, *args, "--store", "b5.db", "--out", "b4", cwd=tmp_path)
    assert code == 0 and "already in the store" in err, err
    assert "holds the outputs of another store" in one_line(*inproc(env, *args, "--store", "b4.db", cwd=tmp_path)[::2])


def test_a_damaged_store_is_one_line_and_every_bad_input_of_compare_exits_2(tmp_path, env, inproc):
    good = tmp_path / "good.db"
    code, _, err = inproc(env, "sweep", SMALL, "--solver", "heun,euler", "--nfe", "5,9", *QUICK, "--store", good)
    assert code == 0, err
    assert good.stat().st_size > 4096
    trunc = tmp_path / "trunc.db"
    trunc.write_bytes(good.read_bytes()[:4096])
    assert "damaged or truncated" in one_line(*inproc(env, "report", trunc)[::2])
    assert "damaged or truncated" in one_line(*inproc(env, "compare", trunc, good)[::2], exit_code=2)
    assert "damaged or truncated" in one_line(*inproc(env, "compare", good, trunc)[::2], exit_code=2)
    junk = tmp_path / "junk.json"
    junk.write_text(json.dumps({"format": "diffbench-sweep", "schema": 1, "cells": "x"}))
    for args in ((junk, good), (tmp_path / "missing.db", good), (good, good, "--tolerance", "abc"), (good, tmp_path)):
        one_line(*inproc(env, "compare", *args)[::2], exit_code=2)


def test_churn_values_that_are_one_sampler_are_noted_and_solvers_without_churn_run_once(tmp_path, env, inproc):
    args = ("sweep", SMALL, "--solver", "heun,dpmpp-2m,unipc", "--churn", "0,10,40", "--nfe", "5", *QUICK)
    code, out, err = run(env, *args, "--store", tmp_path / "c.db", "--out", tmp_path / "c")
    assert code == 0, err
    assert out.count("not applicable: --churn does not apply to dpmpp-2m, unipc: they ran once without it") == 1
    assert "dpmpp-2m edm churn" not in out + err and "unipc edm churn" not in out + err and "—" not in out
    assert "same sampler as churn=40: EDM caps" in out  # a footnote under the table, marked on the cell
    cells = {c["config"]: c for c in strict_json((tmp_path / "c" / "results.json").read_text())["cells"]}
    assert set(cells) == {"heun edm churn=0", "heun edm churn=10", "heun edm churn=40", "dpmpp-2m edm", "unipc edm"}
    c10, c40 = cells["heun edm churn=10"], cells["heun edm churn=40"]
    assert c10["results"]["sw"]["value"] == c40["results"]["sw"]["value"]  # bit-identical
    assert (
        "same sampler as churn=40" in c10["provenance"]["note"]
        and "note" not in cells["heun edm churn=0"]["provenance"]
    )
    # the note is in the store too, for report to show
    code, text, err = inproc(env, "report", tmp_path / "c.db", "--format", "json")
    assert code == 0, err
    # --json prints standard JSON rows with the note
    code, text, err = inproc(env, *args, "--store", tmp_path / "c.db", "--json")
    rows = strict_json(text)
    assert code == 0 and any("same sampler" in (r.get("provenance") or {}).get("note", "") for r in rows)
    assert "not applicable: --churn" in err


def test_compare_an_extended_sweep_against_its_first_run(tmp_path, env, inproc):
    base, ext = tmp_path / "base.db", tmp_path / "ext.db"
    code, _, err = inproc(env, "sweep", SMALL, "--solver", "heun,dpmpp-2m", "--nfe", "5,9", *QUICK, "--store", base)
    assert code == 0, err
    shutil.copy(base, ext)
    more = ("--solver", "heun,dpmpp-2m", "--nfe", "5,10", "--nfe-policy", "nearest", *QUICK, "--store", ext)
    code, _, err = inproc(env, "sweep", SMALL, *more)
    assert code == 0, err
    # NEW holds every baseline cell and more: the new ones are listed, and pass
    code, text, err = inproc(env, "compare", ext, base)
    assert code == 0 and "no regression in 4 comparisons" in text, (text, err)
    assert "4 cell(s) of NEW have no baseline" in text
    assert "'heun edm nfe-policy=nearest' at NFE 10 (spent 9)" in text  # never the exact cell's label
    # report keeps the exact and the nearest cells apart
    code, text, err = inproc(env, "report", ext, "--format", "csv")
    configs = {line.split(",")[1] for line in text.splitlines()[1:] if line}
    assert code == 0 and {"heun edm", "heun edm nfe-policy=nearest"} <= configs, text
    # a baseline cell missing from NEW is an error
    line = one_line(*inproc(env, "compare", base, ext)[::2], exit_code=2)
    assert "4 baseline cell(s) missing from NEW: 'heun edm nfe-policy=nearest' at NFE 5" in line
    # the same grid on other seeds is compared unpaired, and says so (issue 20; it used to be refused)
    other = tmp_path / "seeds.db"
    args = ("--solver", "heun,dpmpp-2m", "--nfe", "5,9", "--seeds", "0-23", "--metric", "sw", "--device", "cpu")
    code, _, err = inproc(env, "sweep", SMALL, *args, "--store", other)
    assert code == 0, err
    code, text, err = inproc(env, "compare", other, base)
    flat = " ".join(text.split())
    assert code in (0, 1) and "compared unpaired" in flat, (text, err)
    assert "seeds 0-23 in NEW against 0-11 in the baseline" in flat and "missing" not in flat


def test_a_sweep_that_fails_writing_its_outputs_keeps_its_store(tmp_path, cli, monkeypatch):
    import diffbench.sweep.report as report
    from diffbench.sweep.store import load_cells

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_reports", disk_full)
    store = tmp_path / "s.db"
    code, _, err = cli(
        "sweep", SMALL, "--solver", "euler", "--nfe", "5", *QUICK, "--store", store, "--out", tmp_path / "o"
    )
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "No space left on device" in lines[0], err
    assert f"every finished cell is kept in {store}" in lines[0]
    assert [c["status"] for c in load_cells(store)] == ["done"]


def test_readme_toml_example_parses_and_runs(tmp_path, env):
    from diffbench.cli.sweep import _aliases, _names
    from diffbench.models.analytic import load_builtin
    from diffbench.sweep.grid import load_config, make_grid

    path = tmp_path / "sweep.toml"
    path.write_text(README_TOML)
    readme = Path(__file__).resolve().parents[1] / "README.md"
    if "```toml" in readme.read_text():  # once the README shows it, it must be this text
        assert README_TOML.strip() in readme.read_text()
    cfg = load_config(path, aliases=_aliases())
    assert cfg.settings["store"] == "gmm-churn.db" and cfg.axes["S_churn"] == [0, 10] and len(cfg.overrides) == 2
    grid = make_grid(load_builtin(SMALL), cfg.axes, fixed=cfg.fixed, overrides=cfg.overrides, names=_names())
    assert [c.config for c in grid.cells[:2]] == ["heun edm churn=0", "heun edm churn=10 s-noise=1.007"]
    assert len(grid.cells) == 9 and grid.not_applicable == (
        "--churn does not apply to dpmpp-2m: it ran once without it",
    )
    assert {c.config for c in grid.cells} == {"heun edm churn=0", "heun edm churn=10 s-noise=1.007", "dpmpp-2m logsnr"}
    assert all(c.skipped is None for c in grid.cells)
    # the command runs it (a small model and fewer seeds and budgets, given on the command line, win)
    code, out, err = run(env, "sweep", SMALL, "--config", path, "--seeds", "0-19", "--nfe", "5", cwd=tmp_path)
    assert code == 0, err
    assert "not applicable: --churn does not apply to dpmpp-2m" in out and (tmp_path / "gmm-churn" / "sw.md").exists()
    assert os.path.exists(tmp_path / "gmm-churn.db")


def test_what_a_cell_would_refuse_is_refused_before_the_store_is_created(tmp_path, env, inproc):
    """--prior (missing, unknown data, another sigma), --tf32 off CUDA and a tuned grid's calibration seeds are
    refused up front with the sampler's own line: no store, no lock, no cell started; a grid where only some
    cells are refused names the first of them."""
    work = tmp_path / "w"
    work.mkdir()
    code, _, err = inproc(
        env, "tune-schedule", SMALL, "--solver", "euler", "--nfe", "4", "-o", "g.json", "--calib-seeds", "5-7",
        "--teacher-points", "9", "--device", "cpu", cwd=work,
    )  # fmt: skip
    assert code == 0, err
    before = listing(work)
    base = ("sweep", SMALL, "--solver", "euler", "--nfe", "4", *QUICK, "--store", "s.db")
    cases = [
        (("--prior", "file:missing.npz"), "missing.npz"),
        (("--prior", "ideal:nosuch"), "nosuch"),
        (("--tf32",), "--tf32 applies on CUDA only"),
        (("--schedule", "file:g.json"), "seeds 5-7 were the calibration seeds of the grid g.json"),
        (("--schedule", "file:g.json,edm"), "schedule file:g.json: seeds 5-7 were the calibration seeds"),
    ]
    for args, needle in cases:
        code, out, err = inproc(env, *base, *args, cwd=work)
        line = one_line(code, err, exit_code=2)
        assert needle in line and "[1/" not in out + err, (args, line)
        assert listing(work) == before, (args, listing(work))  # no .db, no .lock
    # the real command: a fitted prior at sigma 5 refused at another sigma-max, naming the cell
    fit = ("fit-prior", "digits-data", "--sigma", "5", "--kind", "gaussian", "-o", "g5.npz")
    code, _, err = inproc(env, *fit, cwd=work)
    assert code == 0, err
    digits = ("sweep", "digits-edm", "--nfe", "9", "--seeds", "0-99", "--blocks", "4", "--device", "cpu")
    code, out, err = run(env, *digits, "--sigma-max", "4,5", "--prior", "file:g5.npz", "--store", "p.db", cwd=work)
    line = one_line(code, err, exit_code=2)
    assert line.startswith("error: sigma-max 4: --prior file:g5.npz is a prior at sigma 5, but the plan starts at "
                           "sigma 4"), line  # fmt: skip
    assert not (work / "p.db").exists() and not (work / "p.db.lock").exists() and "[1/" not in out + err


def test_outputs_are_checked_before_any_download_and_kl_data_needs_prior_kl(tmp_path, env, inproc):
    """A registry model's reference statistics are a download: a bad --out or --store is refused before it (no
    'cannot reach'); --kl-data without the prior-kl metric is one line, like --eval-classifier without its metrics."""
    (tmp_path / "sweep.toml").write_text("not a folder\n")
    (tmp_path / "notes.db").write_text("not a store\n")
    reg = ("sweep", "edm-cifar10-32x32-uncond-vp", "--nfe", "5", "--seeds", "0-99")
    line = one_line(*inproc(env, *reg, "--out", "sweep.toml", cwd=tmp_path)[::2])
    assert "--out sweep.toml is a file" in line, line
    line = one_line(*inproc(env, *reg, "--store", "notes.db", cwd=tmp_path)[::2])
    assert "notes.db is not a diffbench results store" in line, line
    kl = ("sweep", SMALL, "--nfe", "5", *QUICK, "--kl-data", "digits-data")
    line = one_line(*inproc(env, *kl, cwd=tmp_path)[::2], exit_code=2)
    assert "--kl-data applies to the metric prior-kl" in line, line
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("home", "torch")) == ["notes.db", "sweep.toml"]


def test_guidance_interval_lo_hi_is_one_interval_in_a_sweep_and_in_a_config(tmp_path, env, inproc):
    """`--guidance-interval 0,1` (the documented LO,HI form, as `sample` takes it) is one interval; a list of
    intervals writes LO:HI entries; in a TOML config [LO, HI] is one interval; a malformed one blames its option."""
    from diffbench.cli.options import BY_KEY, parse_axis
    from diffbench.cli.sweep import _aliases
    from diffbench.errors import ConfigError
    from diffbench.sweep.grid import load_config

    o = BY_KEY["guidance_interval"]
    assert parse_axis(o, "0,1") == ["0,1"] and parse_axis(o, "0.3,5") == ["0.3,5"]
    assert parse_axis(o, "0:1,0.3:5") == ["0:1", "0.3:5"]
    for bad in ("0,1,2", "abc", "2,1"):
        with pytest.raises(ConfigError, match="--guidance-interval"):
            parse_axis(o, bad)
    toml = tmp_path / "g.toml"
    toml.write_text("[axes]\nguidance = [1, 2]\nguidance_interval = [0.0, 1.0]\n")
    assert load_config(toml, aliases=_aliases()).axes["guidance_interval"] == ["0,1"]
    toml.write_text('[axes]\nguidance = [1, 2]\nguidance_interval = ["0:1", [0.3, 5]]\n')
    assert load_config(toml, aliases=_aliases()).axes["guidance_interval"] == ["0:1", "0.3,5"]
    toml.write_text("[axes]\nguidance = [1, 2]\n[fixed]\nguidance_interval = [0.0, 1.0]\n")
    assert load_config(toml, aliases=_aliases()).fixed["guidance_interval"] == "0,1"
    # through the command: the config runs; a malformed interval names the file and the option, not 'guidance 1'
    quick = ("--nfe", "5", "--seeds", "0-11", "--metric", "sw", "--device", "cpu", "--store", "g.db")
    cond = SMALL + ",cond=1"
    code, out, err = inproc(env, "sweep", cond, "--config", toml, *quick, cwd=tmp_path)
    assert code == 0 and "guidance=2" in out, err
    toml.write_text("[axes]\nguidance = [1, 2]\n[fixed]\nguidance_interval = [0.0, 1.0, 2.0]\n")
    line = one_line(*inproc(env, "sweep", cond, "--config", toml, *quick, cwd=tmp_path)[::2], exit_code=2)
    assert "[fixed] --guidance-interval [0.0, 1.0, 2.0] is not LO,HI" in line and "guidance 1" not in line, line


def test_report_outputs_belong_to_their_store_as_a_sweeps_do(tmp_path, env, inproc):
    """`report STORE --out DIR` marks DIR as STORE's; another store's report there is refused (one line, nothing
    written) unless --overwrite, which removes only the files the first store wrote (a user's file stays)."""
    quick = ("sweep", SMALL, "--solver", "euler", "--nfe", "4", "--seeds", "0-11", "--blocks", "2", "--device", "cpu")
    assert inproc(env, *quick, "--metric", "sw,fd-exact", "--store", "a.db", cwd=tmp_path)[0] == 0
    assert inproc(env, *quick, "--metric", "sw", "--store", "b.db", cwd=tmp_path)[0] == 0
    code, _, err = inproc(env, "report", "a.db", "--out", "rr", "--no-plot", cwd=tmp_path)
    assert code == 0, err
    owner = strict_json((tmp_path / "rr" / ".diffbench-store").read_text())
    assert owner["store"] == str((tmp_path / "a.db").resolve()) and "fd-exact.md" in owner["files"]
    (tmp_path / "rr" / "notes.txt").write_text("mine\n")
    before = {p.name: p.read_bytes() for p in (tmp_path / "rr").iterdir()}
    line = one_line(*inproc(env, "report", "b.db", "--out", "rr", cwd=tmp_path)[::2])
    assert "rr holds the outputs of another store" in line and "--overwrite" in line, line
    assert {p.name: p.read_bytes() for p in (tmp_path / "rr").iterdir()} == before
    code, _, err = inproc(env, "report", "b.db", "--out", "rr", "--no-plot", "--overwrite", cwd=tmp_path)
    assert code == 0, err
    names = set(listing(tmp_path / "rr"))
    assert "sw.md" in names and "notes.txt" in names and not any(n.startswith("fd-exact") for n in names), names
    owner = strict_json((tmp_path / "rr" / ".diffbench-store").read_text())
    assert owner["store"] == str((tmp_path / "b.db").resolve())
    assert strict_json((tmp_path / "rr" / "results.json").read_text())["store"] == owner["store"]
    # the same store again needs no --overwrite
    assert inproc(env, "report", "b.db", "--out", "rr", "--no-plot", cwd=tmp_path)[0] == 0


def test_compare_a_sweep_that_added_a_metric_verdict_words_and_other_models(tmp_path, env, inproc):
    """The fresh-user trial's three defects of `compare`: an extended sweep that only added a metric is compared
    on the metrics both have (paired), the verdict words are one each (ok / within tolerance / within the
    interval / REGRESSION), and stores of different models are one line naming both."""
    run_ = ("--solver", "heun,euler", "--nfe", "5", "--seeds", "0-23", "--blocks", "3", "--device", "cpu")
    base, more = tmp_path / "base.db", tmp_path / "more.db"
    code, _, err = inproc(env, "sweep", SMALL, *run_, "--metric", "sw", "--store", base, "--out", tmp_path / "b")
    assert code == 0, err
    code, _, err = inproc(env, "sweep", SMALL, *run_, "--metric", "fd-exact,sw", "--store", more, "--no-plot")
    assert code == 0, err
    code, text, err = inproc(env, "compare", more, base, "--tolerance", "2%")
    flat = " ".join(text.split())
    assert code == 0 and "no regression in 2 comparisons" in flat, (text, err)
    assert "2 baseline cell(s) matched to NEW cells of the same run that also measured fd-exact" in flat
    assert "paired jackknife" in flat and "unpaired" not in flat and "have no baseline" not in flat
    # the other way round NEW lacks a metric of the baseline: not comparable, one line
    line = one_line(*inproc(env, "compare", base, more, "--tolerance", "2%")[::2], exit_code=2)
    assert "metrics ['sw'] in NEW against ['fd-exact', 'sw'] in the baseline" in line
    # verdicts: within the tolerance, beyond it but inside the paired interval, beyond both (the gate)
    export, new = tmp_path / "b" / "results.json", tmp_path / "new.json"
    cells = json.loads(export.read_text())
    heun, euler = (next(c for c in cells["cells"] if c["solver"] == s)["results"]["sw"] for s in ("heun", "euler"))
    loo = list(euler["loo"])
    heun["value"] *= 1.01  # +1% at 2%: within tolerance, not "worse"
    heun["loo"] = [v * 1.01 for v in heun["loo"]]
    euler["value"] *= 1.10  # +10%, but not consistently over the blocks: within the interval
    euler["loo"] = [v * (1 + s) for v, s in zip(loo, (0.5, -0.4, 0.2))]

    def verdicts(code_expected: int) -> dict[str, str]:
        new.write_text(json.dumps(cells))
        code, text, err = inproc(env, "compare", new, export, "--tolerance", "2%")
        assert code == code_expected and "worse" not in text, (text, err)
        return {ln.split("│")[1].strip(): ln.split("│")[-2].strip() for ln in text.splitlines() if "edm" in ln}

    assert verdicts(0) == {"heun edm": "within tolerance", "euler edm": "within the interval"}
    euler["loo"] = [v * 1.10 for v in loo]  # every block worse: outside the interval
    assert verdicts(1) == {"heun edm": "within tolerance", "euler edm": "REGRESSION"}
    # another model: one line naming both, exit 2
    other = tmp_path / "other.db"
    model = SMALL.replace("seed=1", "seed=2")
    code, _, err = inproc(env, "sweep", model, *run_, "--metric", "sw", "--store", other, "--no-plot")
    assert code == 0, err
    line = one_line(*inproc(env, "compare", other, base)[::2], exit_code=2)
    assert f"NEW holds cells of model {model}" in line and f"the baseline of model {SMALL}" in line, line
    assert "missing" not in line


def test_settings_every_cell_shares_are_listed_once_under_the_table_and_defaults_are_not(tmp_path, env, inproc):
    """A single-valued non-default setting (churn, rho, guidance) would otherwise be invisible: the row reads
    'heun edm' as an unguided default run does. It is one 'fixed:' line in sweep, report and the exports; a
    sweep at the defaults prints no such line."""
    db = tmp_path / "f.db"
    code, out, err = inproc(
        env, "sweep", SMALL, "--solver", "heun", "--churn", "10", "--rho", "5", "--nfe", "5", *QUICK, "--store", db
    )
    assert code == 0, err
    assert out.count("fixed: rho 5, churn 10") == 1 and "heun edm │" in out
    code, text, err = inproc(env, "report", db)
    assert code == 0 and "fixed: rho 5, churn 10" in text, err
    code, text, err = inproc(env, "report", db, "--format", "md")
    assert code == 0 and "\nfixed: rho 5, churn 10\n" in text, err
    code, text, err = inproc(env, "report", db, "--format", "json")
    assert code == 0 and strict_json(text)["fixed"] == ["rho 5", "churn 10"], err
    code, text, err = inproc(env, "report", db, "--format", "tex")
    assert code == 0 and "% fixed: rho 5, churn 10" in text, err
    # a guided model's single guidance value
    code, out, err = inproc(
        env,
        "sweep",
        "digits-edm-cond",
        "--solver",
        "euler",
        "--nfe",
        "4",
        "--guidance",
        "3",
        "--seeds",
        "0-3",
        "--blocks",
        "2",
        "--metric",
        "class-accuracy",
        "--device",
        "cpu",
        "--store",
        tmp_path / "g.db",
    )
    assert code == 0 and "fixed: guidance 3" in out, err
    # defaults only (the README's main sweep is of this kind): no line, and churn that varies is in the labels
    code, out, err = inproc(
        env, "sweep", SMALL, "--solver", "heun,euler", "--nfe", "5", *QUICK, "--store", tmp_path / "d.db"
    )
    assert code == 0 and "fixed" not in out, err
    code, out, err = inproc(
        env, "sweep", SMALL, "--solver", "heun", "--churn", "0,10", "--nfe", "5", *QUICK, "--store", tmp_path / "v.db"
    )
    assert code == 0 and "fixed" not in out and "churn=10" in out, err
