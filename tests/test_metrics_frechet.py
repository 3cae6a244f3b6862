"""Fréchet distance against the closed forms of REFERENCE §5 and a scipy-sqrtm computation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from diffbench.errors import ConfigError
from diffbench.metrics.frechet import FrechetReference, frechet_distance, psd_factor, sqrt_psd


def random_spd(d: int, rng: np.random.Generator, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((d, rank or 2 * d))
    return a @ a.T / a.shape[1]


def scipy_fd(mu1, s1, mu2, s2) -> float:
    """The pytorch-fid style formula with scipy's sqrtm: an independent reference computation."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_one_dimensional_closed_form():
    # 1-D: (m1 − m2)² + (s1 − s2)² with s the standard deviations
    fd = frechet_distance(mu1=np.array([1.5]), sigma1=np.array([[4.0]]), mu2=np.array([-0.5]), sigma2=np.array([[9.0]]))
    assert fd == pytest.approx((1.5 + 0.5) ** 2 + (2.0 - 3.0) ** 2, rel=1e-12)


def test_commuting_diagonals_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1=mu1, sigma1=np.diag(a), mu2=mu2, sigma2=np.diag(b)) == pytest.approx(
        expected, rel=1e-10
    )


def test_scaled_covariance_closed_form():
    # Σ2 = c²Σ1 gives (1 − c)² tr Σ1
    rng = np.random.default_rng(2)
    s1, c = random_spd(32, rng), 1.7
    mu = rng.standard_normal(32)
    fd = frechet_distance(mu1=mu, sigma1=s1, mu2=mu, sigma2=c**2 * s1)
    assert fd == pytest.approx((1 - c) ** 2 * np.trace(s1), rel=1e-9)


@pytest.mark.parametrize("d", [8, 64, 256])
def test_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    s1, s2 = random_spd(d, rng), random_spd(d, rng)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    ours = frechet_distance(mu1=mu1, sigma1=s1, mu2=mu2, sigma2=s2)
    assert ours == pytest.approx(scipy_fd(mu1, s1, mu2, s2), rel=1e-6)


def test_rank_deficient_covariances_stay_finite_and_match_scipy():
    # covariances from fewer samples than dimensions: singular, where sqrtm struggles
    rng = np.random.default_rng(3)
    s1, s2 = random_spd(64, rng, rank=20), random_spd(64, rng, rank=30)
    mu = np.zeros(64)
    ours = frechet_distance(mu1=mu, sigma1=s1, mu2=mu, sigma2=s2)
    assert np.isfinite(ours) and ours > 0
    assert ours == pytest.approx(scipy_fd(mu, s1, mu, s2), rel=1e-5)


def test_identical_statistics_give_zero():
    rng = np.random.default_rng(4)
    s = random_spd(128, rng)
    mu = rng.standard_normal(128)
    assert frechet_distance(mu1=mu, sigma1=s, mu2=mu, sigma2=s) == pytest.approx(0.0, abs=1e-8)


def test_expected_fd_of_two_gaussian_samples():
    # two independent n-samples of N(0, I_d): E[FD] ≈ (d² + 5d) / (2n) (REFERENCE §5)
    d, n, reps = 6, 400, 300
    rng = np.random.default_rng(5)
    values = []
    for _ in range(reps):
        x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d))
        values.append(
            frechet_distance(
                mu1=x.mean(0), sigma1=np.cov(x, rowvar=False), mu2=y.mean(0), sigma2=np.cov(y, rowvar=False)
            )
        )
    expected = (d * d + 5 * d) / (2 * n)
    stderr = np.std(values) / np.sqrt(reps)
    assert abs(np.mean(values) - expected) < 4 * stderr + 0.03 * expected


def test_sqrt_psd_squares_back():
    rng = np.random.default_rng(6)
    s = random_spd(20, rng)
    r = sqrt_psd(s)
    np.testing.assert_allclose(r @ r, s, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "mu1, sigma1, match",
    [
        (np.array([np.nan, 0.0]), np.eye(2), "NaN or Inf"),
        (np.zeros(2), np.array([[np.inf, 0], [0, 1.0]]), "NaN or Inf"),
        (np.zeros(3), np.eye(2), "do not match"),
    ],
)
def test_bad_statistics_are_one_line_errors(mu1, sigma1, match):
    with pytest.raises(ConfigError, match=match):
        frechet_distance(mu1=mu1, sigma1=sigma1, mu2=np.zeros(2), sigma2=np.eye(2))


def test_dimension_mismatch():
    with pytest.raises(ConfigError, match="feature dimensions differ"):
        frechet_distance(mu1=np.zeros(2), sigma1=np.eye(2), mu2=np.zeros(3), sigma2=np.eye(3))


@pytest.mark.parametrize("rank1, rank2", [(None, None), (20, None), (None, 20)])
def test_factored_reference_matches_scipy_sqrtm(rank1, rank2):
    # the reference side factored once (Cholesky, or eigenvectors when singular) serves every block
    d = 96
    rng = np.random.default_rng(7)
    ref = random_spd(d, rng, rank=rank2)
    mu_ref = rng.standard_normal(d)
    reference = FrechetReference(mu_ref, ref)
    for _ in range(3):
        s, mu = random_spd(d, rng, rank=rank1), rng.standard_normal(d)
        want = scipy_fd(mu, s, mu_ref, ref)
        assert reference.distance(mu, s) == pytest.approx(want, rel=1e-6)
        assert frechet_distance(mu1=mu, sigma1=s, mu2=mu_ref, sigma2=ref) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("rank", [None, 10])
def test_psd_factor_reproduces_the_matrix(rank):
    s = random_spd(24, np.random.default_rng(8), rank=rank)
    f = psd_factor(s)
    np.testing.assert_allclose(f @ f.T, s, rtol=0, atol=1e-12)


def test_fid_blocks_factor_the_reference_once(tmp_path, monkeypatch):
    import torch

    from diffbench.metrics import frechet
    from diffbench.metrics.fid import fid
    from diffbench.metrics.sources import source_from_array
    from diffbench.metrics.stats import save_statistics, statistics_of

    class Proj:
        id = "proj"
        w = torch.randn(3 * 4 * 4, 5, generator=torch.Generator().manual_seed(0))

        def features(self, x):
            return (x.float() / 255).flatten(1) @ self.w

    monkeypatch.setenv("DIFFBENCH_HOME", str(tmp_path / "home"))
    rng = np.random.default_rng(9)
    ref_images = rng.integers(0, 256, (200, 4, 4, 3), dtype=np.uint8)
    ref = save_statistics(statistics_of(source_from_array(ref_images), extractor=Proj()), tmp_path / "ref.npz")
    calls = []
    real = frechet.psd_factor
    monkeypatch.setattr(frechet, "psd_factor", lambda s: calls.append(s.shape) or real(s))
    result = fid(rng.integers(0, 256, (120, 4, 4, 3), dtype=np.uint8), ref=ref, extractor=Proj(), blocks=4)
    assert len(result.blocks) == 4 and calls == [(5, 5)]
