"""Issue 21, the rest: the autoguidance model digits-edm-cond-early (shipped, pinned, accepted by --guide), a
user's clean classifier for class-accuracy / inv-prob (--eval-classifier, its identity in the cell id), and the
paired per-seed rise/fall of p(c|x) between two guidance weights (inv-prob's stored per-seed log p)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

import diffbench
from diffbench.metrics.class_prob import PER_SEED, decode_per_seed, encode_per_seed, user_classifier
from diffbench.models import registry
from diffbench.models.builtin import builtin_dir
from diffbench.sweep.report import paired_rows, seed_shift

CLEAN = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Clean(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.lin = nn.Linear(64, 10)

        def forward(self, x):
            return self.lin(x.flatten(1))


    def clean():
        return Clean()


    def five():
        m = Clean()
        m.lin = nn.Linear(64, 5)
        return m
    """
)


@pytest.fixture()
def user(tmp_path, monkeypatch):
    (tmp_path / "g21_clean_classifier.py").write_text(CLEAN)
    monkeypatch.syspath_prepend(str(tmp_path))
    user_classifier.cache_clear()
    yield "g21_clean_classifier"
    user_classifier.cache_clear()
    sys.modules.pop("g21_clean_classifier", None)


def test_the_early_conditional_model_is_pinned_and_accepted_as_a_guide():
    import hashlib

    entry = registry.get_entry("digits-edm-cond-early")
    path = builtin_dir() / "digits-edm-cond-early.pt"
    assert entry.sha256[path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry.label_dim == 10 and entry.resolution == 8
    model = diffbench.load("digits-edm-cond")
    s = diffbench.sample(
        model, seeds=range(2), class_labels=[3, 7], solver="euler", nfe=4, guidance=2.0,
        guide="digits-edm-cond-early", device="cpu",
    )  # fmt: skip
    assert s.provenance["nfe_per_network"] == {"main": 2.0, "guide": 2.0}
    assert s.provenance["guidance"]["guide_model"]["source_info"]["sha256"] == entry.sha256[path.name]


def test_per_seed_log_p_round_trips_in_four_bytes_a_seed():
    logp = np.log(np.random.default_rng(0).uniform(1e-6, 1, 500))
    text = encode_per_seed(logp)
    assert len(text) <= 4 * 500 * 4 // 3 + 4
    np.testing.assert_allclose(decode_per_seed(text), logp.astype(np.float32))


def _cell(cid, logp, *, seeds="0-5", value=None, guidance=1.0):
    return {
        "id": cid,
        "config": f"W={guidance}",
        "status": "done",
        "nfe": 8,
        "nfe_requested": 8,
        "identity": {"seeds": seeds, "class": None, "blocks": 1, "spec": {"guidance": guidance}},
        "results": {
            "inv-prob": {
                "value": float(np.exp(-np.asarray(logp)).mean()) if value is None else value,
                "better": "lower",
                "blocks": 1,
                PER_SEED: encode_per_seed(np.asarray(logp)),
            }
        },
    }


def test_seed_shift_counts_rises_and_falls_on_the_same_seeds_only():
    a = _cell("a", [-0.1, -0.2, -3.0, -0.5, -0.5, -2.0], guidance=2.0)
    b = _cell("b", [-0.2, -0.1, -4.0, -0.5, -0.1, -2.5])
    shift = seed_shift(a, b)
    assert (shift.rose, shift.fell, shift.same, shift.n) == (3, 2, 1, 6)
    assert "rose for 50.0% and fell for 33.3% of 6 seeds" in shift.describe()
    assert seed_shift(a, _cell("c", [-0.1] * 6, seeds="6-11")) is None  # other seeds: not paired
    assert seed_shift(a, {"results": {"inv-prob": {"value": 1.0}}, "identity": {}}) is None  # stored before


def test_the_sweeps_paired_section_shows_the_per_seed_rise_and_fall(cli, tmp_path):
    code, _, err = cli(
        "sweep", "digits-edm-cond", "--solver", "euler", "--guidance", "1,3", "--nfe", "8", "--metric", "inv-prob",
        "--seeds", "0-9", "--blocks", "2", "--store", tmp_path / "s.db", "--device", "cpu", "--no-plot",
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert code == 0, err
    import json

    cells = json.loads((tmp_path / "out" / "results.json").read_text())["cells"]
    la, lb = (decode_per_seed(c["results"]["inv-prob"][PER_SEED]) for c in cells)
    assert la.shape == lb.shape == (10,)
    lines = paired_rows(cells, "inv-prob")
    assert len(lines) == 1 and "per seed, p(c|x) under" in lines[0] and "of 10 seeds" in lines[0]
    shift = seed_shift(cells[0], cells[1])
    assert shift.rose == int((la > lb).sum()) and shift.fell == int((la < lb).sum())
    report = "\n".join(p.read_text() for p in (tmp_path / "out").rglob("*inv-prob*.md"))
    assert "per seed, p(c|x)" in report


def test_a_user_clean_classifier_scores_the_samples_and_enters_the_cell_id(user):
    from diffbench.sampling.spec import SamplerSpec
    from diffbench.sweep.bench import prepare
    from diffbench.sweep.identity import cell_identity

    spec = SamplerSpec.make(solver="euler", nfe=4)
    kw = dict(seeds=range(4), metrics=["class-accuracy", "inv-prob"], device="cpu")
    own = prepare("digits-edm-cond", eval_classifier=f"{user}:clean", **kw)
    builtin = prepare("digits-edm-cond", **kw)
    id_own, ident = cell_identity(own, spec, None)
    assert ident["metric_options"]["eval_classifier"].startswith(f"{user}:clean@")
    assert "eval_classifier" not in cell_identity(builtin, spec, None)[1]["metric_options"]
    assert id_own != cell_identity(builtin, spec, None)[0]
    from diffbench.metrics.class_prob import user_logits
    from diffbench.metrics.registry import Batch, Scoring

    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    scoring = Scoring(["inv-prob", "class-accuracy"], own.context(), blocks=1)
    scoring.consume(0, Batch(images=images.float() / 127.5 - 1, uint8=images, labels=labels))
    out = scoring.finish()
    p = torch.softmax(user_logits(f"{user}:clean", images).double(), 1)[torch.arange(6), labels]
    assert out["inv-prob"]["all"] == pytest.approx(float((1 / p).mean()), rel=1e-6)
    assert out["inv-prob"]["classifier"].startswith(f"{user}:clean@")


def test_bad_eval_classifier_input_is_one_line(cli, tmp_path, user):
    base = ["sweep", "digits-edm-cond", "--nfe", "4", "--solver", "euler", "--seeds", "0-3", "--device", "cpu"]
    for extra, expected in (
        (["--metric", "inv-prob", "--eval-classifier", f"{user}:five"], "gives 5 classes, the model has 10"),
        (["--metric", "fd", "--eval-classifier", f"{user}:clean"], "applies to the metrics class-accuracy"),
        (["--metric", "inv-prob", "--eval-classifier", "not an entry"], "is not an entry point"),
        (["--metric", "inv-prob", "--eval-classifier", "g21_nowhere:f"], "cannot import"),
    ):
        code, _, err = cli(*base, *extra, "--store", tmp_path / "s.db")
        lines = [x for x in err.strip().splitlines() if x.strip()]
        assert code != 0 and len(lines) == 1 and expected in lines[0], (extra, err)
