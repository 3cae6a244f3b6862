"""fid()'s optional metrics: equal to the direct calls and to torch-fidelity on the same features.

The sample and reference sets are chosen so that precision and recall differ widely (the samples cover a
narrow part of the reference), so a swap of the two is caught; KID is compared with torch-fidelity on the
same random subsets (its RandomState stream, substituted for diffbench's), so every subset size counts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffbench.metrics.fid import fid
from diffbench.metrics.inception_score import inception_score
from diffbench.metrics.kid import kid
from diffbench.metrics.precision_recall import precision_recall
from diffbench.metrics.sources import source_from_array
from diffbench.metrics.stats import save_statistics, statistics_of

torch_fidelity = pytest.importorskip("torch_fidelity")
from conftest import images  # noqa: E402
from torch_fidelity.metric_isc import isc_features_to_metric  # noqa: E402
from torch_fidelity.metric_kid import kid_features_to_metric  # noqa: E402
from torch_fidelity.metric_prc import prc_features_to_metric  # noqa: E402

pytestmark = pytest.mark.usefixtures("home")  # an isolated DIFFBENCH_HOME (conftest.py)


class ProjWithLogits:
    """A deterministic extractor: a fixed random projection of the pixels; logits from the features."""

    id = "proj-logits"

    def __init__(self, dim=8, pixels=3 * 4 * 4):
        self.w = torch.randn(pixels, dim, generator=torch.Generator().manual_seed(0))

    def features(self, x):
        return (x.float() / 255).flatten(1) @ self.w

    def features_and_logits(self, x):
        f = self.features(x)
        return f, f[:, :5] * 2


SAMPLES = images(120, seed=2, lo=60, hi=200)  # a narrow part of the reference: high precision, low recall
REF = images(150, seed=1)
EXT = ProjWithLogits()


def feats(imgs):
    return EXT.features(torch.from_numpy(imgs).permute(0, 3, 1, 2)).double()


@pytest.fixture()
def ref_file(tmp_path):
    stats = statistics_of(source_from_array(REF), extractor=EXT, keep_features=True)
    return save_statistics(stats, tmp_path / "ref.npz")


def run(ref_file, **kw):
    return fid(SAMPLES, ref=ref_file, extractor=EXT, allow_small_n=True, **kw).extras


@pytest.mark.parametrize("k", (2, 3, 5))
def test_precision_recall_equal_direct_call_and_torch_fidelity(ref_file, k):
    x = run(ref_file, precision_recall=True, pr_k=k)
    real, fake = feats(REF), feats(SAMPLES)
    assert (x["precision"], x["recall"]) == precision_recall(real=real, fake=fake, k=k)
    tf = prc_features_to_metric(fake.float(), real.float(), prc_neighborhood=k, verbose=False)
    assert x["precision"] == pytest.approx(tf["precision"], abs=1e-6)
    assert x["recall"] == pytest.approx(tf["recall"], abs=1e-6)
    assert x["precision"] - x["recall"] > 0.2  # far apart: a swap cannot pass


@pytest.mark.parametrize("subsets,size", [(1, 120), (4, 30), (7, 64), (3, 2)])
def test_kid_subsets_and_size_equal_direct_call_and_torch_fidelity(ref_file, monkeypatch, subsets, size):
    x = run(ref_file, kid=True, kid_subsets=subsets, kid_subset_size=size)
    f1, f2 = feats(SAMPLES), feats(REF)
    assert (x["kid_mean"], x["kid_std"]) == kid(features1=f1, features2=f2, subsets=subsets, subset_size=size)
    # the same subsets as torch-fidelity: its RandomState(2020) stream in place of diffbench's generator
    monkeypatch.setattr(np.random, "default_rng", lambda seed=None: np.random.RandomState(2020))
    x = run(ref_file, kid=True, kid_subsets=subsets, kid_subset_size=size)
    tf = kid_features_to_metric(
        f1.float(), f2.float(), kid_subsets=subsets, kid_subset_size=size, verbose=False, rng_seed=2020
    )
    assert x["kid_mean"] == pytest.approx(tf["kernel_inception_distance_mean"], rel=1e-4, abs=1e-7)
    if subsets == 1:  # one subset measures no spread: diffbench reports none
        assert x["kid_std"] is None
    else:
        assert x["kid_std"] == pytest.approx(tf["kernel_inception_distance_std"], rel=1e-3, abs=1e-7)


def test_kid_subset_size_changes_the_value(ref_file):
    values = {size: run(ref_file, kid=True, kid_subsets=5, kid_subset_size=size)["kid_mean"] for size in (10, 40, 120)}
    assert len(set(values.values())) == 3
    # a size above n is clipped to the smaller side (120): the same subsets as asking for 120
    assert run(ref_file, kid=True, kid_subsets=5, kid_subset_size=10_000)["kid_mean"] == values[120]


def test_inception_score_equals_direct_call_and_torch_fidelity(ref_file):
    x = run(ref_file, inception_score=True)
    logits = EXT.features_and_logits(torch.from_numpy(SAMPLES).permute(0, 3, 1, 2))[1]
    assert (x["is_mean"], x["is_std"]) == inception_score(logits=logits)
    tf = isc_features_to_metric(logits, splits=10, shuffle=False)  # 120 = 10 equal splits, the same ones
    assert x["is_mean"] == pytest.approx(tf["inception_score_mean"], rel=1e-6)
    assert x["is_std"] == pytest.approx(tf["inception_score_std"], rel=1e-5, abs=1e-9)


def test_all_three_together_equal_each_alone(ref_file):
    both = run(ref_file, kid=True, precision_recall=True, inception_score=True, kid_subsets=3, kid_subset_size=50)
    alone = {
        **run(ref_file, kid=True, kid_subsets=3, kid_subset_size=50),
        **run(ref_file, precision_recall=True),
        **run(ref_file, inception_score=True),
    }
    assert both == alone


def test_blocks_use_the_union_of_samples_for_optional_metrics(ref_file):
    one = run(ref_file, precision_recall=True, kid=True, kid_subsets=2, kid_subset_size=40)
    three = run(ref_file, precision_recall=True, kid=True, kid_subsets=2, kid_subset_size=40, blocks=3)
    assert one == pytest.approx(three, rel=1e-9)
