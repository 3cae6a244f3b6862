"""tune-schedule: the GITS dynamic programme and cost matrix, the .json grid file round trip through
`--schedule file:`, and every refusal through the real command."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import one_error_line

from diffbench.errors import BudgetError, ConfigError, NotApplicableError
from diffbench.sampling.gits import cost_matrix, deviation, gits_path


def _brute(c: np.ndarray, steps: int, coeff: float) -> tuple[list[int], float]:
    n = c.shape[0]
    best: tuple[list[int], float] = ([], np.inf)
    for mid in itertools.combinations(range(1, n - 1), steps - 1):
        p = [0, *mid, n - 1]
        v = sum(coeff**k * c[p[k], p[k + 1]] for k in range(steps))
        if v < best[1]:
            best = (p, v)
    return best


def test_dp_hand_made_matrix_known_optimum():
    # 5 points; every step costs 10 except the chain 0 -> 2 -> 3 -> 4 (cost 1 each): the only cheap 3-step path
    c = np.full((5, 5), 10.0)
    c[0, 2] = c[2, 3] = c[3, 4] = 1.0
    path, total = gits_path(c, 3, coeff=1.0)
    assert path == [0, 2, 3, 4] and total == pytest.approx(3.0)
    # with the coefficient the later steps weigh more: 1 + 1.15 + 1.15^2
    path, total = gits_path(c, 3, coeff=1.15)
    assert path == [0, 2, 3, 4] and total == pytest.approx(1 + 1.15 + 1.15**2)
    # two steps: through 2 (1 + 10) or 3 (10 + 1): coeff > 1 makes the cheap step the later one worth more
    path, _ = gits_path(c, 2, coeff=1.15)
    assert path == [0, 3, 4]
    path, _ = gits_path(c, 2, coeff=0.5)
    assert path == [0, 2, 4]


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
@pytest.mark.parametrize("coeff", [0.8, 1.0, 1.15])
def test_dp_matches_brute_force(steps, coeff):
    rng = np.random.default_rng(steps * 10 + int(coeff * 100))
    c = rng.uniform(-0.5, 3.0, (8, 8))  # the dev cost can be negative
    path, total = gits_path(c, steps, coeff=coeff)
    want_path, want = _brute(c, steps, coeff)
    assert total == pytest.approx(want)
    assert sum(coeff**k * c[path[k], path[k + 1]] for k in range(steps)) == pytest.approx(want)
    assert path[0] == 0 and path[-1] == 7 and len(path) == steps + 1 and path == sorted(set(path))


def test_dp_refusals():
    c = np.zeros((4, 4))
    for bad in (0, 4):
        with pytest.raises(ConfigError, match="does not fit"):
            gits_path(c, bad)
    with pytest.raises(ConfigError, match="coefficient"):
        gits_path(c, 2, coeff=float("nan"))


def test_cost_matrix_zero_on_a_straight_trajectory():
    # a trajectory whose direction never changes: one Euler step lands exactly on the teacher (both costs 0)
    sig = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    d = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    x0 = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    xs = torch.stack([x0 + (s - sig[0]) * d for s in sig])
    ds = d.expand(4, *d.shape).clone()
    for cost in ("l2", "dev"):
        c = cost_matrix(xs, ds, sig, cost=cost)
        upper = c[np.triu_indices(5, 1)]
        assert np.allclose(upper, 0, atol=1e-12) and np.isinf(c[np.tril_indices(5)]).all()


def test_cost_matrix_l2_and_dev_values():
    # two points off a line: l2 is the distance of the Euler landing from the teacher; dev its distance from the
    # start-end line minus the teacher's
    sig = torch.tensor([2.0, 1.0, 0.0 + 0.5], dtype=torch.float64)
    xs = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]], [[2.0, 0.0]]], dtype=torch.float64)  # [N=3, B=1, 2]
    ds = torch.tensor([[[-1.0, 0.0]], [[-2.0, 2.0]]], dtype=torch.float64)
    l2 = cost_matrix(xs, ds, sig, cost="l2")
    # 0 -> 1: x0 + (1 - 2)(-1, 0) = (1, 0) vs (1, 1): 1
    assert l2[0, 1] == pytest.approx(1.0)
    dev = cost_matrix(xs, ds, sig, cost="dev")
    # the line is the x axis: dev((1, 0)) = 0, dev((1, 1)) = 1
    assert dev[0, 1] == pytest.approx(-1.0)
    assert deviation(xs[1], xs[0], xs[2]).item() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="cost"):
        cost_matrix(xs, ds, sig, cost="l1")


@pytest.fixture(scope="module")
def gmm():
    from diffbench.models.load import load

    return load("gmm")


def test_gits_grid_round_trips_through_schedule_file(gmm, tmp_path):
    from diffbench.sampling.plan import plan
    from diffbench.sampling.run import sample
    from diffbench.sweep.tune import tune_schedule, write_grid

    grid = tune_schedule(gmm, solver="ipndm", nfe=5, calib_seeds=range(100, 116), teacher_points=13, batch=16)
    assert len(grid.sigmas) == 5 and grid.sigmas[0] == pytest.approx(80) and grid.sigmas[-1] == pytest.approx(0.002)
    assert all(a > b for a, b in zip(grid.sigmas, grid.sigmas[1:]))
    r = grid.record
    assert r["method"] == "gits" and r["solver"] == "ipndm" and r["nfe"] == 5 and r["calibration_seeds"] == "100-115"
    assert r["teacher"]["points"] == 13 and r["calibration_nfe"] == 12 * 16 and len(r["model_sha256"]) == 64
    path = write_grid(grid, tmp_path / "g.json")
    data = json.loads(path.read_text())
    assert data["format"] == "diffbench-sigma-grid" and data["sigmas"] == grid.sigmas
    p = plan(gmm, solver="ipndm", schedule=f"file:{path}", nfe=5)
    assert p.nfe == 5 and torch.equal(p.sigmas[:-1], torch.tensor(grid.sigmas, dtype=torch.float64))
    s = sample(gmm, seeds=[0, 1], solver="ipndm", schedule=f"file:{path}", nfe=5, device="cpu")
    assert s.nfe == 5 and torch.isfinite(s.images).all()
    with pytest.raises(ConfigError, match="calibration seeds"):
        sample(gmm, seeds=[3, 105], solver="ipndm", schedule=f"file:{path}", nfe=5, device="cpu")
    with pytest.raises(BudgetError, match="has 5 sigmas"):
        plan(gmm, solver="ipndm", schedule=f"file:{path}", nfe=6)
    # sigma_min endpoint: NFE K = K intervals (Chen et al.'s convention)
    g2 = tune_schedule(gmm, solver="ipndm", nfe=4, endpoint="sigma_min", calib_seeds=range(100, 104), teacher_points=9)
    assert len(g2.sigmas) == 5


def test_tuned_grid_beats_nothing_worse_than_teacher_subgrid(gmm):
    """GITS's path cost is never above that of the same number of evenly spaced fine-grid points."""
    from diffbench.sampling.gits import cost_matrix as cm
    from diffbench.sweep.tune import teacher_trajectory

    fine, xs, ds = teacher_trajectory(gmm, seeds=range(200, 208), points=13, sigma_min=0.002, sigma_max=80.0)
    assert fine.numel() == 13 and xs.shape[:2] == (13, 8) and ds.shape[:2] == (12, 8)
    c = cm(xs, ds, fine, cost="l2")
    path, total = gits_path(c, 4, coeff=1.15)
    even = [0, 3, 6, 9, 12]
    assert total <= sum(1.15**k * c[even[k], even[k + 1]] for k in range(4)) + 1e-12


def test_tune_refusals_in_process(gmm):
    from diffbench.sweep.tune import tune_schedule

    with pytest.raises(NotApplicableError, match="stochastic"):
        tune_schedule(gmm, solver="euler-ancestral", nfe=5, calib_seeds=[1])
    with pytest.raises(BudgetError, match="cannot spend exactly 4"):
        tune_schedule(gmm, solver="heun", nfe=4, calib_seeds=[1])
    with pytest.raises(ConfigError, match="overlap"):
        tune_schedule(gmm, solver="euler", nfe=5, calib_seeds=[1, 2], eval_seeds=[2, 3])
    with pytest.raises(ConfigError, match="teacher points"):
        tune_schedule(gmm, solver="euler", nfe=20, calib_seeds=[1], teacher_points=11)
    with pytest.raises(ConfigError, match="method"):
        tune_schedule(gmm, solver="euler", nfe=5, calib_seeds=[1], method="magic")


def test_bad_json_grid_files(gmm, tmp_path):
    from diffbench.sampling.plan import plan

    cases = {
        "up.json": ({"sigmas": [1.0, 2.0, 0.5]}, "strictly descending"),
        "nan.json": ('{"sigmas": [80, NaN, 0.5]}', "not finite"),
        "inf.json": ('{"sigmas": [Infinity, 1, 0.5]}', "not finite"),
        "nolist.json": ({"grid": [1, 0.5]}, "list 'sigmas'"),
        "text.json": ({"sigmas": ["80", 1]}, "numbers only"),
        "broken.json": ("{not json", "cannot read"),
    }
    for name, (content, msg) in cases.items():
        f = tmp_path / name
        f.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(ConfigError, match=msg):
            plan(gmm, solver="euler", schedule=f"file:{f}", nfe=3)
    # outside the model's range: a model trained on [0.01, 10]
    from diffbench.models.load import load

    narrow = load("gmm")
    narrow.sigma_min, narrow.sigma_max = 0.01, 10.0
    f = tmp_path / "wide.json"
    f.write_text(json.dumps({"sigmas": [80.0, 1.0, 0.5]}))
    with pytest.raises(ConfigError, match="outside the model's sigma range"):
        plan(narrow, solver="euler", schedule=f"file:{f}", nfe=3)


def test_cli_tune_and_refusals(tmp_path, cli):
    """The real command (one subprocess): a GITS grid written; `sample --schedule file:` refuses its calibration
    seeds; each bad input is one line and a non-zero exit (in-process, through the same entry point)."""
    exe = [sys.executable, "-c", "import sys; from diffbench.cli.app import main; main(sys.argv[1:])"]
    out = tmp_path / "g.json"
    ok = subprocess.run(
        [
            *exe,
            "tune-schedule",
            "gmm",
            "--solver",
            "euler",
            "--nfe",
            "4",
            "-o",
            str(out),
            "--calib-seeds",
            "500-507",
            "--teacher-points",
            "9",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "4 sigmas" in ok.stdout and json.loads(out.read_text())["solver"] == "euler"
    code, _, err = cli(
        "sample",
        "gmm",
        "--solver",
        "euler",
        "--schedule",
        f"file:{out}",
        "--nfe",
        "4",
        "--seeds",
        "495-510",
        "--batch",
        "4",
        "-o",
        tmp_path / "s.npz",
        "--device",
        "cpu",
    )
    # the whole overlap, before the first batch (not the first batch's part of it, 500-502)
    assert "seeds 500-507 were the calibration seeds" in one_error_line(code, err, context=True)
    assert not (tmp_path / "s.npz").exists()
    code, _, err = cli(
        "sample",
        "gmm",
        "--solver",
        "euler",
        "--schedule",
        f"file:{out}",
        "--nfe",
        "4",
        "--seeds",
        "0-1",
        "-o",
        tmp_path / "s.npz",
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert "warning" not in err  # the solver and model it was tuned for
    # another solver (sample) or another model (sweep, through run_cell as fid): one warning line, not an error
    code, _, err = cli(
        "sample", "gmm", "--solver", "heun", "--schedule", f"file:{out}", "--nfe", "7", "--seeds", "0-1",
        "-o", tmp_path / "h.npz", "--device", "cpu",
    )  # fmt: skip
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert code == 0 and len(warned) == 1 and "tuned for solver euler (this run: heun)" in warned[0], err
    other = "gmm:shape=1x4x4"
    code, _, err = cli(
        "sweep", other, "--solver", "euler", "--schedule", f"file:{out}", "--nfe", "4", "--seeds", "0-3",
        "--metric", "sw", "--device", "cpu", "--store", tmp_path / "w.db",
    )  # fmt: skip
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert code == 0 and len(warned) == 1 and "tuned for model gmm (sha256" in warned[0], err
    base = ["tune-schedule", "gmm", "--device", "cpu", "--calib-seeds", "0-3"]
    bad = {
        "stochastic": (["--solver", "euler-ancestral", "--nfe", "5", "-o", tmp_path / "a.json"], 2),
        "cannot spend exactly 4": (["--solver", "heun", "--nfe", "4", "-o", tmp_path / "b.json"], 2),
        "overlap": (["--solver", "euler", "--nfe", "5", "--eval-seeds", "3-9", "-o", tmp_path / "c.json"], 2),
        ".json": (["--solver", "euler", "--nfe", "5", "-o", tmp_path / "d.txt"], 2),
        "method": (["--solver", "euler", "--nfe", "5", "--method", "x", "-o", tmp_path / "e.json"], 2),
    }
    for msg, (args, want) in bad.items():
        code, _, err = cli(*base, *args)
        assert msg in one_error_line(code, err) and code == want, (msg, err)


@pytest.mark.slow
def test_rho_method_picks_the_least_reference_error(gmm):
    from diffbench.sweep.tune import RHO_SCAN, tune_schedule

    g = tune_schedule(gmm, solver="euler", nfe=6, method="rho", calib_seeds=range(300, 304), batch=4)
    r = g.record
    tried = {float(k): v for k, v in r["rho_tried"].items()}
    assert set(RHO_SCAN) <= set(tried) and len(tried) > len(RHO_SCAN)
    assert any(abs(k - r["rho"]) < 1e-5 * r["rho"] for k in tried) and r["ref_error"] == min(tried.values())
    assert RHO_SCAN[0] <= r["rho"] <= RHO_SCAN[-1] and len(g.sigmas) == 6
    from diffbench.sampling.schedules import edm_grid

    assert g.sigmas == pytest.approx([float(s) for s in edm_grid(6, 0.002, 80.0, rho=r["rho"])])


def test_output_in_a_missing_folder_is_refused_before_calibration(cli, tmp_path):
    code, _, err = cli(
        "tune-schedule", "gmm", "--solver", "ipndm", "--nfe", "5", "--calib-seeds", "1000-1003",
        "-o", tmp_path / "nodir" / "g.json",
    )
    assert code == 2 and "the folder" in one_error_line(code, err) and "does not exist" in err
    assert not (tmp_path / "nodir").exists()
