"""Streaming float64 moments: merges equal one-shot statistics, in any batching, across 'processes'."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffbench.errors import ConfigError
from diffbench.metrics.moments import (
    empty_moments,
    from_arrays,
    from_sums,
    merge,
    moments_of,
    to_arrays,
    update,
)


def features(n=1000, d=12, seed=0, offset=1e3):
    g = torch.Generator().manual_seed(seed)
    # a large common offset makes the naive Σffᵀ − nμμᵀ form lose digits in float32
    return torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, d) + offset


def test_one_shot_matches_numpy():
    f = features()
    m = moments_of(f)
    mu, sigma = m.numpy()
    np.testing.assert_allclose(mu, f.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f.numpy(), rowvar=False), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("batch", [1, 7, 100, 999])
def test_streaming_merge_equals_one_shot(batch):
    f = features()
    acc = empty_moments(f.shape[1])
    for i in range(0, f.shape[0], batch):
        acc = update(acc, f[i : i + batch])
    ref = moments_of(f)
    assert acc.n == ref.n
    torch.testing.assert_close(acc.mean, ref.mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(acc.covariance(), ref.covariance(), rtol=1e-9, atol=1e-9)


def test_merge_across_processes_via_arrays_is_order_free():
    f = features(seed=1)
    parts = [moments_of(p) for p in torch.tensor_split(f, 5)]
    # as if each part came from another rank: round trip through plain arrays, merge in reverse order
    shipped = [from_arrays(to_arrays(p)) for p in parts][::-1]
    acc = empty_moments(f.shape[1])
    for p in shipped:
        acc = merge(acc, p)
    torch.testing.assert_close(acc.covariance(), moments_of(f).covariance(), rtol=1e-9, atol=1e-9)


def test_float32_features_accumulate_in_float64():
    f32 = features(offset=1e4).float()
    m = moments_of(f32[:500])
    m = merge(m, moments_of(f32[500:]))
    assert m.mean.dtype == torch.float64 and m.m2.dtype == torch.float64
    exact = np.cov(f32.double().numpy(), rowvar=False)
    np.testing.assert_allclose(m.covariance().numpy(), exact, rtol=1e-8, atol=1e-8)


def test_from_sums_matches():
    f = features(offset=0.0).numpy()
    m = from_sums(n=f.shape[0], total=f.sum(0), outer=f.T @ f)
    np.testing.assert_allclose(m.covariance().numpy(), np.cov(f, rowvar=False), rtol=1e-9, atol=1e-12)


def test_bad_shapes():
    with pytest.raises(ConfigError, match="at least 2"):
        moments_of(torch.zeros(1, 3)).covariance()
    with pytest.raises(ConfigError, match="dimension"):
        merge(moments_of(torch.zeros(2, 3)), moments_of(torch.zeros(2, 4)))
    with pytest.raises(ConfigError, match=r"\[N, D\]"):
        moments_of(torch.zeros(3))
