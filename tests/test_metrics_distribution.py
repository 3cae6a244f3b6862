"""Exact metrics for analytic models: sliced Wasserstein closed forms, Fréchet distance to exact moments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffbench.errors import ConfigError
from diffbench.metrics.distribution import exact_frechet, exact_sliced_wasserstein, sliced_wasserstein


def gauss(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_sliced_wasserstein_one_dimensional_shift_is_exact():
    # in 1-D every direction is ±1, and a shift by m moves every order statistic by m
    x = gauss(500, 1, 0)
    assert sliced_wasserstein(x, x + 0.7, projections=8) == pytest.approx(0.7, rel=1e-12)


def test_sliced_wasserstein_of_a_shift_in_d_dimensions():
    # SW₂² = E_θ[(θᵀm)²] = |m|²/d for θ uniform on the sphere (Monte Carlo over 4096 directions)
    d, m = 8, torch.linspace(-1, 1, 8, dtype=torch.float64)
    x = gauss(300, d, 1)
    sw = sliced_wasserstein(x, x + m, projections=4096, seed=3)
    assert sw**2 == pytest.approx(float(m @ m) / d, rel=0.08)


def test_sliced_wasserstein_same_distribution_is_small():
    near = sliced_wasserstein(gauss(4000, 4, 2), gauss(4000, 4, 3), projections=64)
    far = sliced_wasserstein(gauss(4000, 4, 2), gauss(4000, 4, 3) + 0.5, projections=64)
    assert near < 0.1 * far


class Moments:
    """A model with exact moments only (as GaussianMixture gives them)."""

    def __init__(self, mu, cov):
        self._mu, self._cov = mu, cov

    def mean(self):
        return self._mu

    def covariance(self):
        return self._cov


def test_exact_frechet_shift_identity():
    # ‖μ_s + c − μ‖² = ‖μ_s − μ‖² + 2cᵀ(μ_s − μ) + ‖c‖²; the covariance terms do not move
    d = 5
    mu = torch.arange(d, dtype=torch.float64)
    a = gauss(d, d, 4)
    cov = a @ a.T / d + torch.eye(d, dtype=torch.float64)
    model = Moments(mu, cov)
    x = gauss(400, d, 5) @ torch.linalg.cholesky(cov).T + mu
    c = torch.full((d,), 0.3, dtype=torch.float64)
    diff = float(2 * c @ (x.mean(0) - mu) + c @ c)
    assert exact_frechet(model, x + c) - exact_frechet(model, x) == pytest.approx(diff, rel=1e-7)


def test_exact_metrics_of_the_mixture_on_its_own_samples(small_gmm):
    g = torch.Generator().manual_seed(0)
    x = small_gmm.sample_data(20000, g)
    scale = float(torch.trace(small_gmm.covariance()))
    # exact samples: FD only from finite n, ~ (d² + 5d)/(2n) times the scale of Σ
    assert exact_frechet(small_gmm, x) < 0.01 * scale
    shifted = x + 0.5
    assert exact_frechet(small_gmm, shifted) == pytest.approx(
        exact_frechet(small_gmm, x) + 2 * 0.5 * float((x.flatten(1).mean(0) - small_gmm.mean()).sum()) + 0.25 * 2,
        rel=1e-6,
    )
    assert exact_sliced_wasserstein(small_gmm, x) < 0.2 * exact_sliced_wasserstein(small_gmm, shifted)


def test_bad_inputs(small_gmm):
    with pytest.raises(ConfigError, match="needs at least 3"):
        exact_frechet(small_gmm, gauss(2, 2, 0))
    with pytest.raises(ConfigError, match="values each"):
        exact_frechet(small_gmm, gauss(20, 3, 0))
    with pytest.raises(ConfigError, match="no exact moments"):
        exact_frechet(object(), gauss(20, 2, 0))
    with pytest.raises(ConfigError, match="equal-size"):
        sliced_wasserstein(gauss(5, 2, 0), gauss(6, 2, 0))
    assert np.isfinite(exact_frechet(small_gmm, gauss(2, 2, 0), allow_small_n=True))
