"""The sweep library: grid and skips, the cell runner against independent computations, resume, reports, rules."""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as sps

from diffbench.errors import ConfigError, UnknownNameError
from diffbench.sweep.cell import cell_identity, prepare, run_cell
from diffbench.sweep.grid import check_grid, load_config, make_grid
from diffbench.sweep.runner import run_sweep
from diffbench.sweep.store import Store

pytestmark = pytest.mark.usefixtures("home")  # an isolated DIFFBENCH_HOME (conftest.py)

TINY = "gmm:components=2,shape=1x2x2,seed=3"  # 4 values per sample: exact metrics from a few dozen samples


@pytest.fixture(scope="module")
def tiny():
    from diffbench.models.analytic import load_builtin

    return load_builtin(TINY)


def test_grid_skips_unreachable_budgets_and_records_nearest(tiny):
    g = make_grid(tiny, {"solver": ["heun", "dpmpp-2m"], "nfe": [4, 5]})
    skipped = [(c.config, c.nfe) for c in g.skipped]
    assert skipped == [("heun edm", 4)] and "nearest reachable: 3 or 5" in g.skipped[0].skipped
    assert [c.nfe_spent for c in g.runnable] == [5, 4, 5]
    near = make_grid(tiny, {"solver": ["heun"], "nfe": [4, 10]}, fixed={"nfe_policy": "nearest"})
    assert [(c.nfe, c.nfe_spent) for c in near.cells] == [(4, 3), (10, 9)]  # nearest, ties to the lower budget
    with pytest.raises(ConfigError, match="every cell of the grid was skipped: heun cannot spend exactly 4"):
        check_grid(make_grid(tiny, {"solver": ["heun"], "nfe": [4]}))


def test_grid_churn_axis_applies_where_it_can_and_bad_values_are_errors(tiny):
    g = make_grid(
        tiny, {"solver": ["heun", "dpmpp-2m"], "S_churn": [0.0, 40.0], "nfe": [5]}, names={"S_churn": "churn"}
    )
    labels = [(c.config, c.skipped is None) for c in g.cells]
    # dpmpp-2m takes no churn: it runs once, without it, and the option is listed once as not applicable
    assert labels == [("heun edm churn=0", True), ("heun edm churn=40", True), ("dpmpp-2m edm", True)]
    assert g.cells[2].spec.S_churn is None
    assert g.not_applicable == ("--churn does not apply to dpmpp-2m: it ran once without it",)
    # one solver and one value that does not apply: not a crossing, still refused for what it is
    g = make_grid(tiny, {"solver": ["dpmpp-2m"], "S_churn": [40.0], "nfe": [5]})
    assert "do not apply to solver 'dpmpp-2m'" in g.cells[0].skipped
    with pytest.raises(ConfigError, match="churn -1: S_churn must be a finite number >= 0"):
        make_grid(tiny, {"solver": ["heun"], "S_churn": [-1.0, 40.0], "nfe": [5]}, names={"S_churn": "churn"})
    with pytest.raises(UnknownNameError, match="unknown solver 'hune'"):
        make_grid(tiny, {"solver": ["heun", "hune"], "nfe": [5]})


def test_config_file_with_overrides(tiny, tmp_path):
    p = tmp_path / "sweep.toml"
    p.write_text(
        'seeds = "0-9"\nblocks = 2\n[axes]\nsolver = ["heun", "dpmpp-2m"]\nnfe = [5, 9]\n'
        '[fixed]\nsigma_max = 40.0\n[[cell]]\nwhere = { solver = "dpmpp-2m" }\nset = { schedule = "logsnr" }\n'
        '[[cell]]\nwhere = { solver = "heun" }\nset = { rho = 5.0 }\n'
    )
    cfg = load_config(p)
    assert cfg.settings == {"seeds": "0-9", "blocks": 2}
    g = make_grid(tiny, cfg.axes, fixed=cfg.fixed, overrides=cfg.overrides)
    assert [(c.spec.schedule, c.spec.rho, c.spec.sigma_max) for c in g.cells] == [("edm", 5.0, 40.0)] * 2 + [
        ("logsnr", None, 40.0)
    ] * 2
    assert [c.config for c in g.cells[1:3]] == ["heun edm rho=5", "dpmpp-2m logsnr"]
    p.write_text("[axes]\nchrun = [1]\n")
    with pytest.raises(UnknownNameError, match="chrun"):
        load_config(p)


def test_cell_values_equal_independent_computations(tiny):
    """Per-block fd-exact, sw and ref-error equal the metrics applied to `sample`'s own images."""
    from diffbench.metrics.distribution import exact_frechet, exact_sliced_wasserstein
    from diffbench.models.analytic import reference_solution
    from diffbench.sampling.noise import NoiseSource
    from diffbench.sampling.run import sample
    from diffbench.sampling.spec import SamplerSpec

    seeds = list(range(100, 124))
    bench = prepare(tiny, seeds=seeds, metrics=["fd-exact", "sw", "ref-error"], blocks=3, batch=7, device="cpu")
    r = run_cell(bench, SamplerSpec.make(solver="euler", nfe=6))
    for k in range(3):
        block = seeds[k * 8 : (k + 1) * 8]
        x = sample(tiny, seeds=block, solver="euler", nfe=6, device="cpu").images
        assert r.metrics["fd-exact"]["blocks"][k] == pytest.approx(exact_frechet(tiny, x), rel=1e-9)
        assert r.metrics["sw"]["blocks"][k] == pytest.approx(exact_sliced_wasserstein(tiny, x), rel=1e-12)
        # ref-error: RMS to scipy's solution from the same latents, last step to 0 applied to both
        z = NoiseSource(block).latents((1, 2, 2)).double()
        ref = reference_solution(tiny, z * 80.0, sigma_from=80.0, sigma_to=0.002, rtol=1e-10, atol=1e-10)
        ref = tiny(ref, torch.full((8,), 0.002, dtype=torch.float64))
        rms = float((x.double() - ref).pow(2).mean().sqrt())
        assert r.metrics["ref-error"]["blocks"][k] == pytest.approx(rms, rel=1e-6)
    # issue 20: the value is the metric of all 24 samples, `loo` the metric without each block, and the interval
    # the delete-one-block jackknife (value ± t_{K−1}·SE, SE² = (K−1)/K Σ (θ₍ᵢ₎ − θ̄)²) — written out here
    m = r.metrics["fd-exact"]
    x_all = sample(tiny, seeds=seeds, solver="euler", nfe=6, device="cpu").images
    assert m["value"] == pytest.approx(exact_frechet(tiny, x_all), rel=1e-9)
    loo = [exact_frechet(tiny, torch.cat([x_all[: 8 * k], x_all[8 * (k + 1) :]])) for k in range(3)]
    assert m["loo"] == pytest.approx(loo, rel=1e-9)
    se = math.sqrt(2 / 3 * sum((v - np.mean(loo)) ** 2 for v in loo))
    assert m["se"] == pytest.approx(se, rel=1e-9)
    assert m["ci_high"] == pytest.approx(m["value"] + sps.t.ppf(0.975, 2) * se, rel=1e-9)
    assert m["inf"] == pytest.approx(3 * m["value"] - 2 * np.mean(loo), rel=1e-9)  # FD at infinite n
    assert r.metrics["ref-error"]["value"] == pytest.approx(
        math.sqrt(np.mean(np.square(r.metrics["ref-error"]["blocks"]))), rel=1e-9
    )
    assert m["n"] == 8 and m["n_all"] == 24 and r.nfe == 6


def test_identity_ignores_batch_and_resume_is_exact(tiny, tmp_path):
    from diffbench.sampling.run import plan_spec
    from diffbench.sampling.spec import SamplerSpec

    spec = SamplerSpec.make(solver="heun", nfe=7)
    plan = plan_spec(tiny, spec)
    kw = {"seeds": range(40), "metrics": ["fd-exact", "sw"], "blocks": 2, "device": "cpu"}
    a, b = prepare(tiny, batch=6, **kw), prepare(tiny, batch=40, **kw)
    assert cell_identity(a, spec, plan)[0] == cell_identity(b, spec, plan)[0]
    assert (
        cell_identity(a, spec, plan)[0]
        != cell_identity(prepare(tiny, batch=6, **{**kw, "seeds": range(1, 41)}), spec, plan)[0]
    )
    # interrupt after every possible batch: the resumed result is identical
    full = run_cell(a, spec)
    saved = []
    run_cell(a, spec, checkpoint=lambda n, s: saved.append((n, s)), checkpoint_every=1)
    assert [n for n, _ in saved] == [6, 12, 18, 20, 26, 32, 38, 40]  # batches never cross a block boundary
    for n, state in saved[:-1]:
        resumed = run_cell(a, spec, state=state)
        assert resumed.resumed_from == n and resumed.metrics == full.metrics


def _sweep(tiny, path, *, blocks=3, seeds=range(30)):
    bench = prepare(tiny, seeds=seeds, metrics=["fd-exact", "sw"], blocks=blocks, batch=10, device="cpu")
    grid = make_grid(tiny, {"solver": ["heun", "dpmpp-2m"], "nfe": [4, 5, 9]})
    with Store(path) as st:
        rows = run_sweep(bench, grid, st)
        return rows, st.export()


def test_store_reports_every_format_parsed_back(tiny, tmp_path):
    from diffbench.sweep.report import paired_difference, table, to_csv, to_json, to_latex, to_markdown

    rows, export = _sweep(tiny, tmp_path / "s.db")
    done = [r for r in rows if r["status"] == "done"]
    assert len(rows) == 6 and len(done) == 5 and json.loads(json.dumps(export))["cells"][0]["identity"]
    t = table(rows, "fd-exact")
    want = {(r["config"], r["nfe_requested"]): r["results"]["fd-exact"]["value"] for r in done}
    best5 = min(v for (c, n), v in want.items() if n == 5)
    # CSV: exact values (repr)
    got = {
        (r["config"], int(r["nfe"])): float(r["value"]) for r in csv.DictReader(io.StringIO(to_csv(t))) if r["value"]
    }
    assert got == want
    # JSON
    j = json.loads(to_json(t))
    assert {
        (row["config"], int(n)): c["value"] for row in j["rows"] for n, c in row["cells"].items() if c["value"]
    } == want
    # Markdown: the pipe table's cells carry the values to 4 decimals; the best of a column is bold
    md = to_markdown(t)
    lines = [ln for ln in md.splitlines() if ln.startswith("| ") and "config" not in ln]
    for ln in lines:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        for nfe, c in zip(t.nfes, cells[2:]):
            if (cells[0], nfe) in want:
                assert float(re.search(r"[-\d.]+", c.strip("*")).group()) == pytest.approx(
                    want[cells[0], nfe], abs=6e-5
                )
                assert c.startswith("**") == (nfe == 5 and want[cells[0], nfe] == best5 or t.entry(cells[0], nfe).best)
            else:
                assert c == "—"
    # LaTeX: one row per configuration, the best in \textbf
    tex = to_latex(t)
    assert tex.count("\\\\") == 1 + len(t.configs) and "\\textbf{" in tex and "\\begin{tabular}{lrrr}" in tex
    # paired difference: the jackknife of θ_A − θ_B over the same blocks (written out here; issue 20)
    a, b = (next(r for r in done if r["config"] == c and r["nfe_requested"] == 9) for c in ("heun edm", "dpmpp-2m edm"))
    p = paired_difference(a, b, "sw")
    ra, rb = a["results"]["sw"], b["results"]["sw"]
    d = np.array(ra["loo"]) - np.array(rb["loo"])
    half = sps.t.ppf(0.975, 2) * math.sqrt(2 / 3 * ((d - d.mean()) ** 2).sum())
    diff = ra["value"] - rb["value"]
    assert (
        p.difference == pytest.approx(diff) and p.ci_low == pytest.approx(diff - half) and p.test.startswith("paired")
    )


def test_plot_files_written(tiny, tmp_path):
    pytest.importorskip("matplotlib")
    from diffbench.sweep.report import write_reports

    rows, _ = _sweep(tiny, tmp_path / "s.db")
    files = write_reports(rows, tmp_path / "out")
    for name in ("fd-exact.png", "fd-exact.svg", "sw.png", "sw.svg"):
        p = tmp_path / "out" / name
        assert p in files and p.stat().st_size > 1000
    assert (tmp_path / "out" / "sw.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "out" / "sw.svg").read_text()


def test_compare_regression_gate(tiny, tmp_path):
    from diffbench.sweep.compare import CompareInputError, compare_cells, parse_tolerance

    _, base = _sweep(tiny, tmp_path / "a.db")
    cells = base["cells"]
    assert compare_cells(cells, cells, tolerance=parse_tolerance("0%")).exit_code == 0
    worse = json.loads(json.dumps(cells))
    c = next(x for x in worse if x["status"] == "done")
    r = c["results"]["sw"]
    r["value"] *= 1.10
    r["loo"] = [v * 1.10 for v in r["loo"]]  # every leave-one-out value worse: outside the paired interval
    res = compare_cells(worse, cells, tolerance=parse_tolerance("2%"))
    assert res.exit_code == 1 and [(x.config, x.metric) for x in res.regressions] == [(c["config"], "sw")]
    assert compare_cells(worse, cells, tolerance=parse_tolerance("20%")).exit_code == 0
    noisy = json.loads(json.dumps(cells))
    r = next(x for x in noisy if x["status"] == "done")["results"]["sw"]
    shift = [0.3, -0.25, 0.1]  # worse, but not consistently over the paired blocks
    r["loo"] = [v + s * v for v, s in zip(r["loo"], shift)]
    r["value"] *= 1.05
    quiet = compare_cells(noisy, cells, tolerance=parse_tolerance("1%"))
    assert quiet.exit_code == 0 and any(
        x.verdict == "within the interval" and x.test == "paired jackknife" for x in quiet.rows
    )
    with pytest.raises(CompareInputError, match="missing from NEW: 'heun edm' at NFE 5"):
        compare_cells(
            [x for x in cells if (x["config"], x["nfe_requested"]) != ("heun edm", 5)],
            cells,
            tolerance=parse_tolerance("2%"),
        )


def test_compare_with_a_baseline_on_other_blocks_is_unpaired_and_says_so(tiny, tmp_path):
    from diffbench.sweep.compare import compare_cells, parse_tolerance

    _, new = _sweep(tiny, tmp_path / "a.db", blocks=3)
    _, base = _sweep(tiny, tmp_path / "b.db", blocks=5)
    res = compare_cells(new["cells"], base["cells"], tolerance=parse_tolerance("5%"))
    assert res.unpaired.startswith("seed blocks 3 in NEW against 5 in the baseline")
    done = [r for r in res.rows if r.difference is not None]
    assert done and all(r.test == "unpaired" for r in done) and not res.unmatched_new
    # the same blocks: the paired jackknife, and the values of all samples are equal whatever the blocks
    same = compare_cells(new["cells"], new["cells"], tolerance=parse_tolerance("0%"))
    assert not same.unpaired and all(r.test == "paired jackknife" for r in same.rows if r.difference is not None)
    fd = {(r.config, r.nfe): r for r in done if r.metric == "fd-exact"}
    assert all(r.new == pytest.approx(r.baseline, rel=1e-9) for r in fd.values())


def test_compare_with_more_metrics_in_new_is_paired_on_the_shared_ones(tiny, tmp_path):
    from diffbench.sweep.compare import CompareInputError, compare_cells, parse_tolerance

    _, export = _sweep(tiny, tmp_path / "a.db")
    new = [c for c in export["cells"] if c["status"] == "done"]
    base = json.loads(json.dumps(new))  # the same run measuring sw alone: another identity
    for c in base:
        c["id"] = "sw-only-" + c["id"]
        c["identity"]["metrics"] = ["sw"]
        del c["results"]["fd-exact"]
    res = compare_cells(new, base, tolerance=parse_tolerance("2%"))
    assert res.exit_code == 0 and res.more_metrics.endswith("that also measured fd-exact") and not res.unmatched_new
    assert {r.metric for r in res.rows} == {"sw"} and all(r.test == "paired jackknife" for r in res.rows)
    worse = json.loads(json.dumps(new))
    r = worse[0]["results"]["sw"]
    r["value"] *= 1.10
    r["loo"] = [v * 1.10 for v in r["loo"]]  # every block worse: the paired interval excludes 0
    res = compare_cells(worse, base, tolerance=parse_tolerance("2%"))
    assert [(x.config, x.verdict, x.test) for x in res.regressions] == [
        (worse[0]["config"], "REGRESSION", "paired jackknife")
    ]
    # the shared metric measured with other options is not the same number
    other = json.loads(json.dumps(new))
    for c in other:
        c["identity"]["metric_options"]["sw_projections"] += 1
    with pytest.raises(CompareInputError, match="metric options .* in NEW against .* in the baseline"):
        compare_cells(other, base, tolerance=parse_tolerance("2%"))


def test_import_rules():
    """Metrics consume images or features only; the core never imports the sweep (parsed with ast)."""
    root = Path(__file__).resolve().parents[1] / "diffbench"

    def imports(path: Path) -> set[str]:
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.add(node.module)
                out |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{path}: relative import")
        return out

    def under(mods: set[str], pkg: str) -> list[str]:
        return sorted(m for m in mods if m == pkg or m.startswith(pkg + "."))

    checked = 0
    for sub in ("metrics", "sampling", "models"):
        for f in (root / sub).rglob("*.py"):
            mods = imports(f)
            assert not under(mods, "diffbench.sweep"), f"{f} imports the sweep"
            if sub == "metrics":
                assert not under(mods, "diffbench.sampling"), f"{f} imports the sampling engine"
            checked += 1
    for f in (root / "sweep").rglob("*.py"):
        assert not ({"typer", "rich"} & {m.split(".")[0] for m in imports(f)}), f"{f} imports typer/rich"
    assert checked > 20


def test_store_locked_by_a_running_sweep_and_foreign_files(tmp_path):
    from diffbench.sweep.store import StoreError

    with Store(tmp_path / "s.db"):
        with pytest.raises(StoreError, match=r"in use by another running sweep \(pid \d+\)"):
            Store(tmp_path / "s.db")
    with Store(tmp_path / "s.db"):  # released on close
        pass
    (tmp_path / "x.db").write_text("not sqlite")
    with pytest.raises(StoreError, match="not a diffbench results store"):
        Store(tmp_path / "x.db")
    assert (tmp_path / "x.db").read_text() == "not sqlite"
