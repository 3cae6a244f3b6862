"""Recipes (published tables as sweeps): every shipped recipe loads, plans the paper's NFE, and its first cell runs
on a format-true random-weights EDM pickle of the registry model's shape, with measured beside published."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from conftest import images

from diffbench.errors import UnknownNameError
from diffbench.models import edm_pickle, registry
from diffbench.models.nets import build_network
from diffbench.models.precond import EDMPrecond
from diffbench.recipes import Published, get_recipe, list_recipes, measured
from diffbench.sweep.grid import load_config

RECIPES = [r.name for r in list_recipes()]
PROJ = textwrap.dedent(
    """
    import torch

    class Proj:
        id = "proj"

        def features(self, x):
            w = torch.randn(x[0].numel(), 4, generator=torch.Generator().manual_seed(0))
            return (x.float() / 255).flatten(1) @ w

    def make(device="cpu"):
        return Proj()
    """
)


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFBENCH_HOME", str(tmp_path / "home"))
    (tmp_path / "extmod_recipes.py").write_text(PROJ)
    monkeypatch.syspath_prepend(str(tmp_path))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_release(path, name: str):
    """An EDM pickle of the registry entry's format: its preconditioning, architecture family, resolution,
    channels and label count, with a few random-weight channels (the real one is 56-296 M parameters)."""
    e = registry.get_entry(name)
    assert e.precond == "EDMPrecond"
    res, ch, labels = e.resolution, e.channels, e.label_dim
    torch.manual_seed(0)
    if e.network == "SongUNet":
        kw = dict(model_channels=8, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[res // 2 if res < 64 else 0])
        if e.architecture == "NCSN++":
            kw.update(
                embedding_type="fourier",
                encoder_type="residual",
                decoder_type="standard",
                channel_mult_noise=2,
                resample_filter=[1, 3, 3, 1],
            )
    else:  # an attention layer at 32x32 alone would cost most of the test's time
        kw = dict(model_channels=8, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[res // 2 if res < 64 else 0])
    net = build_network(
        e.network, {"img_resolution": res, "in_channels": ch, "out_channels": ch, "label_dim": labels, **kw}
    )
    edm_pickle.write_edm_pickle(path, denoiser=EDMPrecond(net, img_resolution=res, img_channels=ch, label_dim=labels))
    return path


def test_every_recipe_is_listed_with_a_source_and_published_values(cli):
    assert len(RECIPES) >= 12
    code, out, _ = cli("recipes", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == RECIPES
    for r in list_recipes():
        assert r.source and r.published and registry.get_entry(r.model).kind == "model"
        load_config(r.path)  # an ordinary sweep config
    table2 = {r.name: r.published[0].value for r in list_recipes() if r.name.startswith("edm-table2")}
    assert table2["edm-table2-cifar10-cond-vp"] == 1.79 and table2["edm-table2-ffhq-ve"] == 2.53
    unipc = get_recipe("diff-sampler-cifar10-unipc")
    assert [(p.where["nfe"], p.value) for p in unipc.published][:3] == [(3, 109.61), (4, 45.20), (5, 23.98)]
    with pytest.raises(UnknownNameError, match="recipe 'edm-table9'"):
        get_recipe("edm-table9")


def test_measured_statistic():
    assert measured({"value": 2.0, "blocks": [2.3, 1.9, 2.1]}, "min-block") == 1.9
    assert measured({"value": 2.0, "blocks": [2.3]}, "value") == 2.0
    assert Published("fid", 1.0, where={"nfe": 3}).matches({"nfe": 3, "solver": "x"})


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    """Random Inception weights in the layout torch-fidelity loads (fid needs the Inception space)."""
    pytest.importorskip("torch_fidelity")
    from test_metrics_inception import write_random_inception_weights

    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    write_random_inception_weights(path)
    return path


def run_first_cell(name, tmp_path, cli, ext, seeds="0-2", metric=()):
    """`sweep MODEL --recipe NAME --seeds 0-2 --blocks 1` on a tiny format-true EDM pickle, restricted to the
    recipe's first published cell; returns (recipe, stdout, store rows)."""
    recipe = get_recipe(name)
    model = tiny_release(tmp_path / f"{recipe.model}.pkl", recipe.model)
    size = registry.get_entry(recipe.model).resolution
    np.savez(tmp_path / "refimgs.npz", images=images(6, seed=1, size=size))
    code, _, err = cli("stats", tmp_path / "refimgs.npz", "-o", tmp_path / "ref.npz", *ext)
    assert code == 0, err
    first = recipe.published[0]
    only = [a for k, v in first.where.items() for a in (f"--{k.replace('_', '-')}", str(v))]  # its first cell
    code, out, err = cli(
        "sweep", model, "--recipe", name, "--seeds", seeds, "--ref", tmp_path / "ref.npz", *ext, "--allow-small-n",
        "--blocks", "1", "--store", tmp_path / "s.db", "--out", tmp_path / "out", "--no-plot", *only, *metric,
    )  # fmt: skip
    assert code == 0, err
    from diffbench.sweep.store import Store

    with Store(tmp_path / "s.db") as st:
        rows = st.cells(status="done")
    assert len(rows) == 1 and rows[0]["nfe"] == first.nfe  # the recipe's sampler spends the paper's NFE
    return recipe, out, rows


# ImageNet's stochastic recipe is 511 NFE on a 1000-class 64x64 network (30 s on this CPU even when tiny) and the
# 64x64 rows take 8 s each: the default suite runs one 64x64 row (ffhq-vp), -m slow the others
SLOW = ("imagenet", "ffhq-ve", "afhqv2")
FAST = [pytest.param(n, marks=pytest.mark.slow) if any(k in n for k in SLOW) else n for n in RECIPES]


@pytest.mark.parametrize("name", FAST)
def test_first_cell_of_each_recipe_runs_on_a_format_true_model(name, tmp_path, cli):
    """Each recipe's first cell at the paper's NFE on its model's format (scored as fd in a cheap feature space,
    so no published fid is beside it: the comparison itself is tested with Inception below)."""
    _, out, rows = run_first_cell(
        name, tmp_path, cli, ("--extractor", "extmod_recipes:make"), metric=("--metric", "fd")
    )
    assert "fd" in rows[0]["results"] and "published" not in rows[0]["provenance"]


def _published_is_beside_measured(name, tmp_path, cli, inception):
    recipe, out, rows = run_first_cell(name, tmp_path, cli, ("--inception-weights", inception))
    first = recipe.published[0]
    assert "QUICK LOOK" in out and recipe.title in out and recipe.source in out
    line = next(li for li in out.splitlines() if li.startswith("| ") and f"| {first.nfe} |" in li)
    cells = [c.strip() for c in line.strip("|").split("|")]
    got, pub, diff = float(cells[3]), float(cells[4]), float(cells[5])
    assert pub == pytest.approx(first.value) and diff == pytest.approx(got - pub, rel=1e-3, abs=1e-3)
    assert "difference" in (tmp_path / "out" / "published.md").read_text()
    entry = rows[0]["provenance"]["published"][0]
    assert entry["published"] == first.value and entry["quick_look"] is True
    assert entry["measured"] == measured(rows[0]["results"]["fid"], first.statistic)


def test_measured_beside_published_through_the_command(tmp_path, cli, monkeypatch):
    """The comparison path (--recipe lookup, table, quick-look mark, store, published.md) on a recipe of our own
    scored in a cheap feature space: Inception on a CPU takes minutes (the slow tests below use it)."""
    import diffbench.recipes as recipes

    folder = tmp_path / "recipes"
    folder.mkdir()
    text = get_recipe("diff-sampler-cifar10-ipndm").path.read_text().replace('"fid"', '"fd"')
    (folder / "own.toml").write_text(text)
    monkeypatch.setattr(recipes, "recipe_dir", lambda: folder)
    recipe, out, rows = run_first_cell("own", tmp_path, cli, ("--extractor", "extmod_recipes:make"))
    first = recipe.published[0]
    assert "QUICK LOOK" in out and recipe.title in out and recipe.source in out
    line = next(li for li in out.splitlines() if li.startswith("| ") and f"| {first.nfe} |" in li)
    cells = [c.strip() for c in line.strip("|").split("|")]
    got, pub, diff = float(cells[3]), float(cells[4]), float(cells[5])
    assert pub == pytest.approx(first.value) and diff == pytest.approx(got - pub, rel=1e-3, abs=1e-3)
    assert "difference" in (tmp_path / "out" / "published.md").read_text()
    entry = rows[0]["provenance"]["published"][0]
    assert entry["published"] == first.value and entry["quick_look"] is True
    assert entry["measured"] == measured(rows[0]["results"]["fd"], first.statistic)
    code, report, err = cli("report", tmp_path / "s.db")  # the report shows them again, from the store alone
    assert code == 0, err
    assert "measured beside published" in report and "QUICK LOOK" in report and line in report.splitlines()


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_measured_beside_published_every_recipe(name, tmp_path, cli, inception):
    _published_is_beside_measured(name, tmp_path, cli, inception)


def test_bad_recipe_inputs_through_the_command(tmp_path):
    """An unknown recipe, and --recipe with --config: one line each, exit 2, no store created."""
    import subprocess
    import sys
    from pathlib import Path

    bin_ = str(Path(sys.executable).parent / "diffbench")
    (tmp_path / "c.toml").write_text("[axes]\nnfe = [3]\n")
    cases = [
        (["--recipe", "edm-table9"], "recipe 'edm-table9'"),
        (["--recipe", "edm-table2-ffhq-vp", "--config", str(tmp_path / "c.toml")], "--recipe or --config"),
    ]
    for extra, needle in cases:
        p = subprocess.run(
            [bin_, "sweep", *extra, "--store", str(tmp_path / "s.db")], capture_output=True, text=True, timeout=120
        )
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], (extra, p.returncode, p.stderr)
        assert not (tmp_path / "s.db").exists()
        if extra[1] == "edm-table9":  # every name, whole, and where to see them (not "4 ... and 8 more")
            assert all(name in lines[0] for name in RECIPES) and "diffbench recipes" in lines[0], lines[0]


def test_recipes_table_never_cuts_a_name(cli, monkeypatch):
    """Piped at 80 columns (or narrower), `diffbench recipes` shows each name whole, as --recipe takes it."""
    for width in ("80", "50"):
        monkeypatch.setenv("COLUMNS", width)
        code, out, _ = cli("recipes")
        assert code == 0, out
        cells = {line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")}
        assert set(RECIPES) <= cells, (width, sorted(set(RECIPES) - cells))
