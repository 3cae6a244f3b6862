"""Issue 21/22 leftovers: `compare` pairs two stores that differ only in guidance (with the per-seed rise/fall of
p(c|x)), `fid --model --class-metrics --eval-classifier`, classifier guidance steering an unconditional model
toward `--class C`, and the ideal prior's warning in `sample` and `fid --model`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from diffbench.metrics.class_prob import PER_SEED, decode_per_seed, user_classifier
from diffbench.sweep.store import load_cells

COND = ["digits-edm-cond", "--solver", "euler", "--nfe", "4", "--seeds", "0-7", "--blocks", "2", "--device", "cpu"]
CLASS_METRICS = ["--metric", "inv-prob,class-accuracy", "--no-plot"]


def _sweep(cli, tmp_path, name: str, *extra: str):
    store = tmp_path / f"{name}.db"
    code, _, err = cli("sweep", *COND, *CLASS_METRICS, *extra, "--store", store, "--out", tmp_path / name)
    assert code == 0, err
    return store


def test_compare_pairs_two_guidance_weights_seed_by_seed(cli, tmp_path):
    w1 = _sweep(cli, tmp_path, "w1", "--guidance", "1")
    w2 = _sweep(cli, tmp_path, "w2", "--guidance", "2")
    code, out, err = cli("compare", w2, w1)
    assert code == 0, err
    text = " ".join(out.split())
    assert "matched across guidance" in text and "guidance 2 vs guidance 1" in text
    assert "paired jackknife" in text  # same seeds and blocks: the paired interval, not the unpaired one
    (a,), (b,) = load_cells(w2, what="x"), load_cells(w1, what="x")
    la, lb = (decode_per_seed(c["results"]["inv-prob"][PER_SEED]) for c in (a, b))
    rose, fell = int((la > lb).sum()), int((la < lb).sum())
    assert rose + fell > 0  # the two weights sample different images from the same latents
    expected = f"per seed, p(c|x) under NEW rose for {rose / 8:.1%} and fell for {fell / 8:.1%} of 8 seeds"
    assert expected in text
    # the same comparison the other way round: the rises are the falls
    code, out, _ = cli("compare", w1, w2)
    assert code == 0 and f"rose for {fell / 8:.1%} and fell for {rose / 8:.1%}" in " ".join(out.split())


def test_compare_across_guidance_needs_the_same_seeds(cli, tmp_path):
    w1 = _sweep(cli, tmp_path, "w1", "--guidance", "1")
    store = tmp_path / "other.db"
    args = [*COND[:5], "--seeds", "8-15", "--blocks", "2", "--device", "cpu", *CLASS_METRICS, "--guidance", "2"]
    code, _, err = cli("sweep", *args, "--store", store, "--out", tmp_path / "other")
    assert code == 0, err
    code, _, err = cli("compare", store, w1)
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and "missing from NEW" in lines[0], err


CLEAN = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Clean(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(5)
            self.lin = nn.Linear(64, 10)

        def forward(self, x):
            return self.lin(x.flatten(1))


    def clean():
        return Clean()
    """
)


@pytest.fixture()
def user(tmp_path, monkeypatch):
    (tmp_path / "l21_clean_classifier.py").write_text(CLEAN)
    monkeypatch.syspath_prepend(str(tmp_path))
    user_classifier.cache_clear()
    yield "l21_clean_classifier"
    user_classifier.cache_clear()
    sys.modules.pop("l21_clean_classifier", None)


def test_fid_model_scores_class_metrics_with_the_users_classifier(cli, tmp_path, user):
    base = ["fid", "--model", "digits-edm-cond", "--solver", "euler", "--nfe", "4", "--seeds", "0-7", "--blocks", "2"]
    base += ["--allow-small-n", "--device", "cpu", "--class-metrics", "--json"]
    code, out, err = cli(*base, "--eval-classifier", f"{user}:clean")
    assert code == 0, err
    own = json.loads(out)
    code, out, err = cli(*base)
    assert code == 0, err
    builtin = json.loads(out)
    assert own["samples"]["classifier"].startswith(f"{user}:clean@")
    assert builtin["samples"]["classifier"].startswith("digits-cnn@")
    assert own["fid"] == builtin["fid"]  # the same samples and features; only the class metrics' classifier differs
    assert own["extras"]["inv_prob"] != builtin["extras"]["inv_prob"]
    for r in (own, builtin):
        x = r["extras"]
        assert 0 <= x["class_accuracy"] <= 1 and x["inv_prob"] >= 1
        assert x["inv_prob_low"] <= x["inv_prob"] <= x["inv_prob_high"] and x["inv_prob_q50"] <= x["inv_prob_q99"]
    # the same cell in a sweep gives the same numbers (one scoring path)
    store = tmp_path / "s.db"
    code, _, err = cli(
        "sweep", *COND, *CLASS_METRICS, "--eval-classifier", f"{user}:clean", "--store", store, "--out", tmp_path / "o"
    )
    assert code == 0, err
    (cell,) = load_cells(store, what="x")
    assert cell["results"]["inv-prob"]["value"] == pytest.approx(own["extras"]["inv_prob"], rel=1e-12)
    assert cell["results"]["class-accuracy"]["value"] == pytest.approx(own["extras"]["class_accuracy"], rel=1e-12)
    code, out, err = cli(*base[:-1], "--eval-classifier", f"{user}:clean")  # text output names the classifier
    assert code == 0 and f"classifier {user}:clean@" in out and "inv-prob E[1/p(c|x)]" in out, err


def test_classifier_guidance_on_an_unconditional_model_carries_the_class_for_the_classifier_alone():
    import diffbench

    model = diffbench.load("digits-edm")
    kw = dict(seeds=range(3), solver="euler", nfe=4, device="cpu")
    s = diffbench.sample(model, class_labels=3, classifier_guidance=2.0, classifier="digits-noisy-classifier", **kw)
    assert s.provenance["nfe_per_network"] == {"main": 2.0, "classifier": 2.0}
    assert s.class_labels.tolist() == [3, 3, 3]
    plain = diffbench.sample(model, **kw)
    zero = diffbench.sample(model, class_labels=3, classifier_guidance=0.0, classifier="digits-noisy-classifier", **kw)
    assert np.array_equal(np.asarray(zero.images), np.asarray(plain.images))  # s = 0 is plain sampling, bit for bit


@pytest.mark.slow
def test_classifier_guidance_steers_the_unconditional_model_toward_the_class(cli, tmp_path):
    """Dhariwal & Nichol's setting: digits-edm ignores labels; digits-noisy-classifier steers it toward 3."""
    store = tmp_path / "s.db"
    code, _, err = cli(
        "sweep", "digits-edm", "--solver", "euler", "--nfe", "8", "--classifier-guidance", "0,1,3",
        "--classifier", "digits-noisy-classifier", "--class", "3", "--metric", "class-accuracy,inv-prob",
        "--seeds", "0-15", "--device", "cpu", "--no-plot", "--store", store, "--out", tmp_path / "o",
    )  # fmt: skip
    assert code == 0, err
    cells = sorted(load_cells(store, what="x"), key=lambda c: c["identity"]["spec"]["classifier_guidance"])
    acc = [c["results"]["class-accuracy"]["value"] for c in cells]
    inv = [c["results"]["inv-prob"]["value"] for c in cells]
    assert acc[0] < 0.2 < acc[1] < acc[2]  # about one digit in ten is a 3 unguided
    assert inv[0] > inv[1] > inv[2]
    assert [c["nfe"] for c in cells] == [8, 8, 8]
    assert cells[1]["provenance"]["nfe_per_network"] == {"main": 4.0, "classifier": 4.0}
    assert all(c["identity"]["class"] == 3 for c in cells)


def test_the_ideal_prior_warns_in_sample_and_fid(cli, tmp_path):
    common = ["--solver", "euler", "--nfe", "2", "--sigma-max", "3", "--prior", "ideal:digits-data", "--seeds", "0-3"]
    code, _, err = cli("sample", "digits-edm", *common, "--out", tmp_path / "s.npz", "--device", "cpu")
    assert code == 0 and "warning: ideal prior" in err and "copies the data" in err, err
    assert sum("warning:" in line for line in err.splitlines()) == 1
    code, _, err = cli("fid", "--model", "digits-edm", *common, "--allow-small-n", "--device", "cpu")
    assert code == 0 and "warning: ideal prior" in err and "copies the data" in err, err
    code, _, err = cli("sample", "digits-edm", *common[:6], "--seeds", "0-3", "--out", tmp_path / "t.npz")
    assert code == 0 and "warning" not in err, err


BAD = [
    (["fid", "x.npz", "--class-metrics"], "apply only with --model"),
    (["fid", "--model", "digits-edm", "--nfe", "4", "--seeds", "0-3", "--class-metrics", "--allow-small-n"],
     "give --class C"),
    (["fid", "--model", "digits-edm-cond", "--nfe", "4", "--seeds", "0-3", "--eval-classifier", "a.b:c"],
     "applies to the metrics class-accuracy"),
    (["sweep", "digits-edm", "--nfe", "8", "--seeds", "0-3", "--classifier-guidance", "1",
      "--classifier", "digits-noisy-classifier", "--metric", "class-accuracy"], "give --class C"),
    (["sample", "digits-edm", "--nfe", "8", "--seeds", "0-3", "--classifier-guidance", "1",
      "--classifier", "digits-noisy-classifier", "--class", "12"], "class labels must be in [0, 9]"),
    (["sample", "digits-edm", "--nfe", "8", "--seeds", "0-3", "--class", "3"], "the model is unconditional"),
    (["sweep", "digits-edm", "--nfe", "8", "--seeds", "0-3", "--class", "12", "--metric", "inv-prob"],
     "--class 12 is not a class of the digits classifier"),
]  # fmt: skip


def test_bad_input_through_the_real_command_is_one_line_each(tmp_path):
    script = textwrap.dedent(
        f"""
        import contextlib, io, json
        from diffbench.cli.app import main
        out = []
        for i, args in enumerate({[a for a, _ in BAD]!r}):
            err = io.StringIO()
            code = 0
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    extra = ["--solver", "euler", "--device", "cpu"] if args[0] != "fid" or "--model" in args else []
                    main([*args, *extra, *(["--out", f"o{{i}}"] if args[0] != "fid" else [])])
                except SystemExit as exc:
                    code = int(exc.code or 0)
            out.append([code, err.getvalue()])
        print(json.dumps(out))
        """
    )
    env = {"PYTHONPATH": ":".join(sys.path), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    for (code, err), (args, expected), i in zip(json.loads(res.stdout), BAD, range(len(BAD)), strict=True):
        lines = [x for x in err.strip().splitlines() if x.strip()]
        assert code == 2 and len(lines) == 1 and expected in lines[0], (args, code, err)
        assert not (tmp_path / f"o{i}").exists()
    assert not np.any([p.suffix == ".db" for p in tmp_path.iterdir()])
