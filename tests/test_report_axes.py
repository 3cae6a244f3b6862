"""Report tables over any swept axis (--x, --series), cell notes as footnotes, paired lines only between cells
of the same counted NFE, and the held-out floor; cells are store rows written out here (no sampling)."""

from __future__ import annotations

import itertools
import json
import statistics

import pytest

from diffbench.errors import ConfigError
from diffbench.sweep.report import (
    add_floor,
    heldout_floor,
    paired_rows,
    table,
    to_csv,
    to_json,
    to_latex,
    to_markdown,
    varying_axes,
    write_reports,
)

NAMES = {"S_churn": "churn", "sigma_max": "sigma-max", "nfe_policy": "nfe-policy"}
_ids = itertools.count()


def cell(solver, nfe, *, churn=None, blocks=(1.0, 1.2, 0.8), spent=None, note=None, status="done", **spec):
    """A store row as the runner writes it (the fields the report reads). The metric behaves as a mean, so the
    value of all samples is the block mean and each leave-one-out value the mean of the other blocks."""
    options = {"solver": solver, "schedule": spec.pop("schedule", "edm"), "nfe": nfe, "S_churn": churn, **spec}
    label = " ".join([solver, options["schedule"], *(f"churn={churn:g}" for _ in [1] if churn is not None)])
    value = statistics.mean(blocks)
    row = {
        "id": f"c{next(_ids)}",
        "config": label,
        "solver": solver,
        "schedule": options["schedule"],
        "nfe_requested": nfe,
        "nfe": spent or nfe,
        "endpoint": "edm",
        "status": status,
        "identity": {"spec": options, "seeds": "0-29", "blocks": len(blocks), "class": None},
        "provenance": {"model_name": "gmm", **({"note": note} if note else {})},
        "results": {
            "sw": {
                "value": value,
                "all": value,
                "blocks": list(blocks),
                "loo": [(sum(blocks) - b) / (len(blocks) - 1) for b in blocks] if len(blocks) > 1 else None,
                "ci_low": value - 0.5,
                "ci_high": value + 0.5,
                "interval": "jackknife",
                "n": 10,
                "n_all": 10 * len(blocks),
                "better": "lower",
            }
        },
    }
    if status == "skipped":
        row.update(results=None, nfe=None, skip_reason="option(s) --churn do not apply to solver 'dpmpp-2m'")
        row["identity"] = {"options": options, "skipped": True}
    return row


def churn_grid():
    """heun and euler at churn 0 and 10, NFE 5 and 9: values that say where they belong (solver, churn, nfe)."""
    out = []
    for s, solver in enumerate(("heun", "euler")):
        for churn in (0.0, 10.0):
            for nfe in (5, 9):
                v = 100 * s + churn + nfe / 100
                out.append(cell(solver, nfe, churn=churn, blocks=(v - 0.1, v, v + 0.1)))
    return out


def test_default_layout_is_configurations_by_nfe():
    t = table(churn_grid(), "sw")
    assert t.x == "nfe" and t.columns == [5, 9] and t.nfes == [5, 9]
    assert t.configs == ["heun edm churn=0", "heun edm churn=10", "euler edm churn=0", "euler edm churn=10"]
    assert t.entry("euler edm churn=10", 9).value == pytest.approx(110.09)
    assert "| config | convention | NFE 5 | NFE 9 |" in to_markdown(t)
    assert to_markdown(t).startswith("**sw by NFE (lower is better")


def test_any_axis_as_columns_and_any_as_rows():
    cells = churn_grid()
    assert varying_axes(cells, NAMES) == {"nfe": [5, 9], "solver": ["heun", "euler"], "churn": [0, 10]}
    t = table(cells, "sw", x="churn", series=["solver", "nfe"], names=NAMES)
    assert t.x == "churn" and t.columns == [0, 10] and not t.x_log
    assert t.configs == ["heun NFE 5", "heun NFE 9", "euler NFE 5", "euler NFE 9"]
    for solver, s in (("heun", 0), ("euler", 100)):
        for nfe in (5, 9):
            for churn in (0, 10):
                assert t.entry(f"{solver} NFE {nfe}", churn).value == pytest.approx(s + churn + nfe / 100)
    md = to_markdown(t)
    assert "**sw by churn" in md and "| config | convention | churn 0 | churn 10 |" in md
    assert "\\begin{tabular}{lrr}" in to_latex(t) and "churn 0 & churn 10" in to_latex(t)
    csv_text = to_csv(t)
    assert csv_text.splitlines()[0].startswith("metric,config,convention,churn,nfe,")
    assert '"x": "churn"' in to_json(t)
    # the spec keyword works as well as the flag name; the default rows are every other varying axis
    t2 = table(cells, "sw", x="S_churn", names=NAMES)
    assert t2.configs == ["heun edm NFE 5", "heun edm NFE 9", "euler edm NFE 5", "euler edm NFE 9"]
    # solver as columns
    t3 = table(cells, "sw", x="solver", series=["churn", "nfe"], names=NAMES)
    assert t3.columns == ["heun", "euler"] and t3.configs[0] == "churn=0 NFE 5"


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"x": "rho"}, "--x rho: not an axis that varies across these cells; axes that vary: nfe, solver, churn"),
        ({"x": "bogus"}, "--x bogus: not an axis that varies"),
        ({"series": ["solver"]}, "--series solver leaves churn varying within a line; add it (--series solver,churn)"),
        ({"x": "churn", "series": ["churn"]}, "--series churn: churn is already the x axis"),
        ({"series": ["solver", "solver", "churn"]}, "--series names solver twice"),
    ],
)
def test_an_axis_that_does_not_vary_or_leaves_one_out_is_one_error_listing_the_axes(layout, message):
    with pytest.raises(ConfigError) as err:
        table(churn_grid(), "sw", names=NAMES, **layout)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_solver_without_the_option_sits_at_its_neutral_value_and_skips_show_as_dashes():
    cells = [
        cell("heun", 5, churn=0.0),
        cell("heun", 5, churn=40.0),
        cell("dpmpp-2m", 5),  # churn 0 is dropped from its spec: it takes no churn
        cell("dpmpp-2m", 5, churn=40.0, status="skipped"),
    ]
    t = table(cells, "sw", x="churn", series=["solver"], names=NAMES)
    assert t.columns == [0, 40] and t.configs == ["heun", "dpmpp-2m"]
    assert t.entry("dpmpp-2m", 0).value is not None and t.entry("dpmpp-2m", 40).value is None
    assert "| dpmpp-2m | endpoint edm | **1.0000 ±0.5** | — |" in to_markdown(t)


def test_cell_notes_are_numbered_footnotes_under_the_table():
    same = "churn 40 is the same sampler as churn 10 at this NFE: EDM's per-step γ cap"
    cells = [
        cell("heun", 5, churn=10.0),
        cell("heun", 5, churn=40.0, note=same),
        cell("heun", 9, churn=40.0, note=same),
        cell("heun", 9, churn=10.0, note="another note"),
    ]
    t = table(cells, "sw", names=NAMES)
    assert t.footnotes == [same, "another note"]
    assert t.entry("heun edm churn=40", 5).footnote == 1 == t.entry("heun edm churn=40", 9).footnote
    md = to_markdown(t)
    assert "1.0000 ±0.5 [1]" in md and "1.0000 ±0.5 [2]" in md
    assert f"\n[1] {same}\n[2] another note\n" in md
    from diffbench.sweep.report import cell_note

    assert cell_note({"note": " a "}) == "a" and cell_note({"provenance": {"notes": ["b", "c"]}}) == "b; c"
    assert cell_note({"provenance": {}}) is None
    assert same in to_csv(t) and json.loads(to_json(t))["footnotes"][0] == same and f"% [1] {same}" in to_latex(t)


def test_paired_lines_pair_only_cells_at_the_same_counted_nfe():
    # nfe_policy nearest: heun cannot spend 10 and spends 9; dpmpp-2m spends 10 and is the column's best
    cells = [
        cell("heun", 10, spent=9, blocks=(5.0, 5.5, 6.0)),
        cell("euler", 10, spent=9, blocks=(7.0, 7.2, 7.9)),
        cell("dpmpp-2m", 10, blocks=(1.0, 1.1, 1.3)),
    ]
    t = table(cells, "sw")
    assert t.entry("dpmpp-2m edm", 10).best
    lines = paired_rows(cells, "sw")
    assert len(lines) == 1 and lines[0].startswith("NFE 10 (counted 9): euler edm − heun edm = +1.867")
    assert "dpmpp-2m" not in lines[0]
    # at the exact policy every cell of a column is paired with the column's best, as before
    exact = [cell("heun", 9, blocks=(5.0, 5.5, 6.0)), cell("dpmpp-2m", 9, blocks=(1.0, 1.1, 1.3))]
    (line,) = paired_rows(exact, "sw")
    assert line.startswith("NFE 9: heun edm − dpmpp-2m edm = +4.367, paired 95% jackknife interval")


def test_cells_of_another_sweep_with_other_seeds_are_not_paired():
    a, b = cell("heun", 9, blocks=(5.0, 5.5, 6.0)), cell("euler", 9, blocks=(1.0, 1.1, 1.3))
    b["identity"]["seeds"] = "100-129"
    assert paired_rows([a, b], "sw") == []


def test_tables_are_written_when_plotting_fails(tmp_path, monkeypatch):
    import diffbench.sweep.plot as plot
    from diffbench.errors import MissingDependencyError

    def broken(*a, **k):
        raise MissingDependencyError("plots need matplotlib: pip install matplotlib")

    monkeypatch.setattr(plot, "plot_table", broken)
    written = write_reports(churn_grid(), tmp_path / "out", x="churn", series=["solver", "nfe"], names=NAMES)
    assert sorted(p.name for p in written) == ["sw.csv", "sw.json", "sw.md", "sw.tex"]
    assert written.skipped == ["plot of sw: plots need matplotlib: pip install matplotlib"]
    assert "churn 10" in (tmp_path / "out" / "sw.md").read_text()


def test_a_bad_axis_fails_before_any_file_is_written(tmp_path):
    with pytest.raises(ConfigError, match="--x rho"):
        write_reports(churn_grid(), tmp_path / "out", x="rho", names=NAMES)
    assert not list((tmp_path / "out").iterdir())


def digits_cell(n_all):
    from diffbench.models.registry import fetch_file

    c = cell("heun", 35, blocks=(14.0, 15.0))
    fd = {**c["results"]["sw"], "n": n_all // 2, "n_all": n_all, "extractor": "digits-cnn@9a983264d2fc"}
    c["results"] = {"fd": fd}
    c["provenance"].update(model_name="digits-edm", ref=str(fetch_file("digits-stats")[0]))
    return c


def test_floor_is_the_held_out_digits_at_the_tables_n():
    # the table's n is the n of its values: all N samples of a cell (issue 20), no longer the block size
    # at n = 297 (the whole held-out split) it is benchmarks/digits_quality.json's floor, 13.512455851557206
    floor, why = heldout_floor([digits_cell(297)], "fd", 297)
    assert why is None and floor.n == 297 and floor.draws == 1
    assert floor.value == pytest.approx(13.512455851557206, rel=1e-6)  # float32 features, another sum order
    # a smaller n: the mean over random subsets of that size, larger (FD's finite-n bias grows as n shrinks)
    t = add_floor(table([digits_cell(100)], "fd"), [digits_cell(100)])
    assert t.floor.n == 100 and t.floor.draws == 8 and t.floor.value > 13.6
    assert "floor fd = " in to_markdown(t) and "100 held-out real digits" in to_markdown(t)
    # where there is none, the reason (never an error)
    assert heldout_floor([digits_cell(400)], "fd", 400)[1] == (
        "the held-out split has 297 images, fewer than the table's n=400"
    )
    assert "not for sw" in heldout_floor(churn_grid(), "sw", 10)[1]
    t = add_floor(table(churn_grid(), "sw"), churn_grid())
    assert t.floor is None and "no floor: a floor is defined for fd" in to_markdown(t)


def test_a_series_may_name_a_setting_every_cell_shares_but_x_may_not():
    heun = [c for c in churn_grid() if c["solver"] == "heun"]
    t = table(heun, "sw", x="churn", series=["solver", "nfe"], names=NAMES)
    assert t.configs == ["heun NFE 5", "heun NFE 9"] and t.columns == [0, 10]
    with pytest.raises(
        ConfigError, match="--x solver: not an axis that varies across these cells; axes that vary: nfe, churn"
    ):
        table(heun, "sw", x="solver", names=NAMES)


def legacy_cell(solver, nfe, blocks):
    """A result stored before the jackknife (issue 20): value = block mean, `all` = the value of all samples,
    a t-interval over the blocks, no leave-one-out values."""
    c = cell(solver, nfe, blocks=blocks)
    r = c["results"]["sw"]
    r.pop("loo"), r.pop("interval"), r.pop("n_all")
    r["all"] = r["value"] - 0.25  # the pooled value differs from the block mean (FD's c/n bias)
    return c


def test_results_stored_before_the_jackknife_are_read_with_their_pooled_value_and_marked():
    old = [legacy_cell("heun", 9, (5.0, 5.5)), legacy_cell("euler", 9, (7.0, 7.5))]
    t = table(old, "sw")
    e = t.entry("heun edm", 9)
    assert e.value == pytest.approx(5.0) and e.ci_low is None and e.footnote == 1
    assert len(t.footnotes) == 1 and t.footnotes[0].startswith("stored before the jackknife")
    assert "t-interval over 2 blocks" in t.footnotes[0]
    md = to_markdown(t, paired_rows(old, "sw"))
    assert "5.0000 [1]" in md and "±" not in md.split("\n")[4]
    assert paired_rows(old, "sw") == []  # no leave-one-out values: no paired line
    from diffbench.sweep.report import paired_difference

    p = paired_difference(old[1], old[0], "sw")
    assert p.test == "none" and "before the jackknife" in p.verdict()


def test_the_estimate_at_infinite_n_is_a_table_in_the_exports_only(tmp_path):
    from diffbench.sweep.report import inf_metrics

    cells = [cell("heun", 9, blocks=(5.0, 5.5, 6.0)), cell("euler", 9, blocks=(7.0, 7.2, 7.9))]
    for c in cells:
        r = c["results"]["sw"]
        r.update(inf=r["value"] - 1.0, inf_low=r["value"] - 1.5, inf_high=r["value"] - 0.5)
    assert inf_metrics(cells) == ["sw-inf"]
    t = table(cells, "sw-inf")
    assert t.entry("heun edm", 9).value == pytest.approx(4.5) and t.entry("heun edm", 9).half_width == 0.5
    assert "estimate at infinite n" in to_markdown(t)
    written = write_reports(cells, tmp_path / "out", plot=False)
    assert {p.name for p in written} >= {"sw.md", "sw-inf.md", "sw-inf.csv", "sw-inf.json", "sw-inf.tex"}
    assert (
        "± is the 95% jackknife interval over 3 blocks of the sw of all 30" in (tmp_path / "out" / "sw.md").read_text()
    )
