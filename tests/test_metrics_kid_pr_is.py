"""KID, precision/recall and Inception Score against brute-force formulas and torch-fidelity."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from diffbench.errors import ConfigError
from diffbench.metrics.inception_score import inception_score
from diffbench.metrics.kid import kid, mmd2_unbiased
from diffbench.metrics.precision_recall import precision_recall


def feats(n, d, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def test_mmd2_matches_double_loop():
    # unbiased MMD² (Gretton et al. 2012, Eq. 3) with k(x, y) = (xᵀy/d + 1)³, written out as sums
    x, y = feats(9, 4, 0).numpy(), feats(9, 4, 1, shift=0.5).numpy()
    k = lambda a, b: (a @ b / 4 + 1) ** 3
    m = len(x)
    sxx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert mmd2_unbiased(torch.as_tensor(x), torch.as_tensor(y)) == pytest.approx(sxx + syy - 2 * sxy, rel=1e-10)


def test_kid_matches_torch_fidelity_on_full_subsets():
    from torch_fidelity.metric_kid import kid_features_to_metric

    a, b = feats(200, 16, 2), feats(200, 16, 3, shift=0.3)
    # subsets of the full size are permutations, so both tools see the same sets
    ours, _ = kid(features1=a, features2=b, subsets=3, subset_size=200)
    ref = kid_features_to_metric(a.float(), b.float(), kid_subsets=3, kid_subset_size=200, verbose=False)
    assert ours == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4)


def test_kid_near_zero_for_same_distribution_and_positive_otherwise():
    same, _ = kid(features1=feats(300, 8, 4), features2=feats(300, 8, 5), subsets=20, subset_size=100)
    diff, _ = kid(features1=feats(300, 8, 4), features2=feats(300, 8, 5, shift=1.0), subsets=20, subset_size=100)
    assert abs(same) < 0.05 * diff and diff > 0


def test_precision_recall_matches_torch_fidelity():
    from torch_fidelity.metric_prc import prc_features_to_metric

    real, fake = feats(300, 10, 6), feats(250, 10, 7, shift=0.7)
    p, r = precision_recall(real=real, fake=fake, k=3)
    # torch-fidelity convention: features_1 generated, features_2 real
    ref = prc_features_to_metric(fake.float(), real.float(), prc_neighborhood=3, verbose=False)
    # torch-fidelity returns float32 fractions; 1e-6 is far below one sample (1/300)
    assert p == pytest.approx(ref["precision"], abs=1e-6)
    assert r == pytest.approx(ref["recall"], abs=1e-6)
    assert 0 < p < 1 and 0 < r < 1


def test_precision_recall_of_a_set_with_itself_is_one():
    x = feats(50, 5, 8)
    assert precision_recall(real=x, fake=x, k=3) == (1.0, 1.0)


def test_inception_score_matches_torch_fidelity_single_split():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = feats(500, 20, 9) * 3
    ours, _ = inception_score(logits=logits, splits=1)
    ref = isc_features_to_metric(logits.float(), splits=1, shuffle=False)
    assert ours == pytest.approx(ref["inception_score_mean"], rel=1e-5)


def test_inception_score_closed_forms():
    # one-hot, uniformly spread predictions over K classes give IS = K; identical predictions give 1
    k = 7
    confident = torch.full((70, k), -1e4, dtype=torch.float64)
    confident[torch.arange(70), torch.arange(70) % k] = 0
    assert inception_score(logits=confident, splits=1)[0] == pytest.approx(k, rel=1e-9)
    assert inception_score(logits=torch.zeros(70, k), splits=7)[0] == pytest.approx(1.0, rel=1e-12)


def test_bad_inputs():
    with pytest.raises(ConfigError, match="at least 10 samples"):
        inception_score(logits=torch.zeros(5, 3))
    with pytest.raises(ConfigError, match="more than 3 samples"):
        precision_recall(real=feats(3, 2, 0), fake=feats(10, 2, 1))
    with pytest.raises(ConfigError, match="dimensions differ"):
        kid(features1=feats(10, 2, 0), features2=feats(10, 3, 1))
    assert np.isfinite(kid(features1=feats(10, 2, 0), features2=feats(5, 2, 1), subsets=2)[0])
