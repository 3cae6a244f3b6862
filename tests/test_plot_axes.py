"""The plot a researcher would keep, checked through matplotlib's objects (not pixels): ticks at the swept
values, log x only for NFE and sigmas, error bars inside the axis, the metric's full name, direction, model
and n in the labels, the floor as a dashed line."""

from __future__ import annotations

import pytest
from test_report_axes import NAMES, cell, churn_grid

from diffbench.sweep.report import Floor, table

pytest.importorskip("matplotlib")


def fig_of(t):
    from diffbench.sweep.plot import figure

    return figure(t)


def test_nfe_axis_is_log_with_ticks_at_the_swept_values_only():
    cells = [cell(s, n, blocks=(b, b + 1, b + 2)) for s, b in (("heun", 5.0), ("euler", 9.0)) for n in (3, 5, 9, 35)]
    fig = fig_of(table(cells, "sw"))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and list(ax.get_xticks()) == [3, 5, 9, 35]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["3", "5", "9", "35"]
    assert ax.xaxis.get_minorticklocs().size == 0  # no 3×10⁰, 4×10⁰ labels
    assert ax.get_xlabel() == "NFE (network evaluations per sample)"
    assert ax.get_ylabel() == "sliced Wasserstein-2 distance to the exact distribution, lower is better"
    # the values are of all 30 samples; the bars their jackknife interval over the 3 blocks (issue 20)
    assert ax.get_title() == "gmm: sw vs NFE\nn = 30; bars: 95% jackknife interval over 3 blocks"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["heun edm", "euler edm"]


def test_ticks_sit_at_the_nfe_actually_counted():
    cells = [cell("heun", 10, spent=9), cell("heun", 20, spent=19)]
    ax = fig_of(table(cells, "sw")).axes[0]
    assert list(ax.get_xticks()) == [9, 19]


def test_another_numeric_axis_is_linear_and_a_named_one_categorical():
    ax = fig_of(table(churn_grid(), "sw", x="churn", series=["solver", "nfe"], names=NAMES)).axes[0]
    assert ax.get_xscale() == "linear" and list(ax.get_xticks()) == [0, 10] and ax.get_xlabel() == "churn"
    assert len(ax.get_legend().get_texts()) == 4
    ax = fig_of(table(churn_grid(), "sw", x="solver", series=["churn", "nfe"], names=NAMES)).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["heun", "euler"]


def test_a_sigma_axis_is_log():
    cells = [cell("heun", 9, sigma_max=s) for s in (10.0, 80.0, 200.0)]
    t = table(cells, "sw", x="sigma-max", names=NAMES)
    ax = fig_of(t).axes[0]
    assert t.x == "sigma-max" and ax.get_xscale() == "log" and list(ax.get_xticks()) == [10, 80, 200]


def test_error_bars_are_clipped_to_the_axis():
    # a wide interval reaching below 0 on a log y axis: its bar ends at the axis bottom, not off the figure
    cells = [cell("heun", n, blocks=(v, v, v)) for n, v in ((3, 100.0), (9, 10.0), (35, 2.0))]
    for c, hw in zip(cells, (150.0, 1.0, 0.5)):
        r = c["results"]["sw"]
        r["ci_low"], r["ci_high"] = r["value"] - hw, r["value"] + hw
    ax = fig_of(table(cells, "sw")).axes[0]
    assert ax.get_yscale() == "log"
    bottom, top = ax.get_ylim()
    assert bottom > 0 and top >= 250
    for coll in ax.collections:  # the error bars' line segments
        for seg in coll.get_segments():
            ys = seg[:, 1]
            assert ys.min() >= bottom * (1 - 1e-9) and ys.max() <= top * (1 + 1e-9)


def test_full_name_with_feature_space_and_the_floor_line():
    c = cell("heun", 35, blocks=(14.0, 15.0))
    fd = {**c["results"]["sw"], "n": 297 // 2, "n_all": 297, "extractor": "digits-cnn@9a983264d2fc"}
    c["results"] = {"fd": fd}
    c["provenance"]["model_name"] = "digits-edm"
    t = table([c], "fd")
    t.floor = Floor(13.5, 297, 1, 297, "held-out real digits")
    fig = fig_of(t)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "Fréchet distance (digits-cnn features), lower is better"
    assert ax.get_title().startswith("digits-edm: fd vs NFE\nn = 297;")
    floors = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(floors) == 1 and list(floors[0].get_ydata()) == [13.5, 13.5]
    caption = " ".join(t.get_text() for t in fig.texts)
    assert "Dashed: floor = fd of 297 held-out real digits" in caption and "as good as real data" in caption


def test_plot_files_written(tmp_path):
    from diffbench.sweep.plot import plot_table

    files = plot_table(table(churn_grid(), "sw"), tmp_path / "sw")
    assert [p.name for p in files] == ["sw.png", "sw.svg"]
    assert files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "<svg" in files[1].read_text()
