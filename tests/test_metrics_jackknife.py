"""The delete-one-block jackknife (diffbench.metrics.jackknife) against its closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffbench.errors import ConfigError
from diffbench.metrics.jackknife import (
    default_blocks,
    jackknife,
    leave_one_out,
    leave_one_out_moments,
    paired,
    t_quantile,
)
from diffbench.metrics.moments import moments_of


def test_the_jackknife_se_of_a_mean_is_the_sd_of_block_means_over_root_k():
    # for θ = the mean, θ₍ᵢ₎ = (Kθ − mᵢ)/(K−1), so SE_jack = sd(mᵢ)/√K exactly (Efron & Stein 1981)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 25))  # K = 12 blocks of 25
    loo = [np.delete(x, i, axis=0).mean() for i in range(12)]
    j = jackknife(x.mean(), loo)
    block_means = x.mean(axis=1)
    assert j.se == pytest.approx(block_means.std(ddof=1) / math.sqrt(12), rel=1e-12)
    assert j.half_width == pytest.approx(t_quantile(11) * j.se, rel=1e-15)
    assert j.bias_corrected == pytest.approx(x.mean(), rel=1e-12)  # the mean has no bias to remove


def test_the_bias_corrected_plug_in_variance_is_the_unbiased_variance():
    # with one sample per block, K θ − (K−1) θ̄ of the plug-in variance Σ(x−x̄)²/n is Σ(x−x̄)²/(n−1) exactly
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    loo = [np.delete(x, i).var() for i in range(40)]
    assert jackknife(x.var(), loo).bias_corrected == pytest.approx(x.var(ddof=1), rel=1e-10)


def test_the_interval_is_centred_on_the_value_of_all_samples_and_the_bias_corrected_one_on_its_own():
    j = jackknife(10.0, [9.0, 11.0, 10.5, 9.5])
    assert (j.ci_low + j.ci_high) / 2 == 10.0
    assert j.bias_corrected == 4 * 10.0 - 3 * 10.0
    assert j.bc_high - j.bc_low == pytest.approx(j.ci_high - j.ci_low)
    assert j.k == 4


def test_the_paired_jackknife_is_the_jackknife_of_the_differences():
    a = jackknife(5.0, [4.0, 6.0, 5.5])
    b = jackknife(3.0, [2.5, 3.5, 3.0])
    d = paired(a, b)
    assert d.value == 2.0 and d.loo == (1.5, 2.5, 2.5)
    assert d.se == pytest.approx(jackknife(2.0, [1.5, 2.5, 2.5]).se)
    with pytest.raises(ConfigError, match="same seed blocks"):
        paired(a, jackknife(1.0, [1.0, 1.0]))


def test_a_shared_shift_cancels_in_the_paired_difference():
    rng = np.random.default_rng(2)
    shared = rng.normal(scale=10.0, size=8)
    a = jackknife(100.0, list(100.0 + shared))
    b = jackknife(90.0, list(90.0 + shared + 0.01 * rng.normal(size=8)))
    d = paired(a, b)
    assert d.se < a.se / 100 and d.excludes_zero


def test_one_block_has_a_value_and_no_interval():
    j = jackknife(7.0, [])
    assert j.value == 7.0 and math.isnan(j.se) and not j.excludes_zero


def test_non_finite_values_are_refused():
    with pytest.raises(ConfigError, match="finite"):
        jackknife(float("nan"), [1.0, 2.0])


@pytest.mark.parametrize("k", [2, 3, 7])
def test_leave_one_out_combines_every_block_but_one(k):
    blocks = [frozenset({i}) for i in range(k)]
    out = leave_one_out(blocks, lambda a, b: a | b)
    assert out == [frozenset(range(k)) - {i} for i in range(k)]


def test_leave_one_out_moments_equal_the_moments_of_the_other_blocks():
    rng = np.random.default_rng(3)
    f = torch.from_numpy(rng.normal(size=(50, 4)))
    blocks = [moments_of(f[i * 10 : (i + 1) * 10]) for i in range(5)]
    for i, m in enumerate(leave_one_out_moments(blocks)):
        direct = moments_of(torch.cat([f[: i * 10], f[(i + 1) * 10 :]]))
        assert m.n == 40
        torch.testing.assert_close(m.mean, direct.mean, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(m.m2, direct.m2, rtol=1e-12, atol=1e-12)


def test_leave_one_out_needs_two_blocks():
    with pytest.raises(ConfigError, match="at least 2"):
        leave_one_out([1], lambda a, b: a + b)


@pytest.mark.parametrize(
    ("n", "k"), [(594, 22), (400, 20), (50000, 20), (600, 20), (300, 20), (97, None), (10, 10), (5, None)]
)
def test_default_blocks_is_the_divisor_nearest_20(n, k):
    assert default_blocks(n) == k
