"""The Python API: load, sample, duck-typed denoisers, analytic models and their exact solution."""

from __future__ import annotations

import math

import pytest
import torch

import diffbench
from diffbench.errors import ConfigError, UnknownNameError
from diffbench.models.analytic import GaussianMixture, load_builtin, reference_solution


class EDMStyleNet(torch.nn.Module):
    """What a user might pass: an EDM-style network object, not made by diffbench.load."""

    sigma_min, sigma_max, img_channels, img_resolution, label_dim = 0.002, 80.0, 1, 4, 3

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None):
        assert class_labels is not None and class_labels.shape == (x.shape[0], 3)
        return x.to(torch.float32) * 0.5 / (1 + sigma.reshape(-1, 1, 1, 1).float() ** 2)


def test_sample_returns_images_nfe_sigmas_seeds(gmm):
    out = diffbench.sample(gmm, seeds=[0, 1, 2], solver="heun", schedule="edm", nfe=35, device="cpu")
    assert out.images.shape == (3, 3, 8, 8) and out.images.dtype == torch.float64
    assert out.nfe == 35 and out.seeds == [0, 1, 2]
    assert len(out.sigmas) == 19 and out.sigmas[-1] == 0
    assert out.provenance["plan"]["nfe"] == 35 and out.provenance["seeds"] == "0-2"


def test_duck_typed_network_is_accepted():
    out = diffbench.sample(
        EDMStyleNet(),
        seeds=range(5),
        solver="euler",
        nfe=4,
        batch=2,
        device="cpu",
        class_labels=[0, 1, 2, 0, 1],
    )
    assert out.images.shape == (5, 1, 4, 4) and out.class_labels.tolist() == [0, 1, 2, 0, 1]
    assert torch.isfinite(out.images).all()


def test_float32_state(gmm):
    a = diffbench.sample(gmm, seeds=[0, 1], nfe=35, dtype="float32", device="cpu")
    b = diffbench.sample(gmm, seeds=[0, 1], nfe=35, device="cpu")
    assert a.images.dtype == torch.float32
    assert torch.allclose(a.images.double(), b.images, atol=1e-4)


def test_not_a_denoiser_is_refused():
    with pytest.raises(ConfigError, match="is not a Denoiser: it lacks"):
        diffbench.sample(object(), seeds=[0], nfe=3)


def test_bad_labels_and_seeds(gmm):
    with pytest.raises(ConfigError, match="unconditional"):
        diffbench.sample(gmm, seeds=[0], nfe=3, class_labels=1)
    with pytest.raises(ConfigError, match=r"class labels must be in \[0, 2\]"):
        diffbench.sample(EDMStyleNet(), seeds=[0], nfe=3, class_labels=3, solver="euler")
    with pytest.raises(ConfigError, match="2 latents for 3 seeds"):
        diffbench.sample(gmm, seeds=[0, 1, 2], latents=torch.zeros(2, 3, 8, 8), nfe=3)


def test_non_finite_is_named_with_step_and_sigma(gmm):
    class Bad(EDMStyleNet):
        label_dim = 0

        def forward(self, x, sigma, class_labels=None):
            return x * float("nan") if float(sigma[0]) < 10 else x * 0

    from diffbench.errors import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"non-finite value at step \d+/\d+ \(sigma [\d.]+ -> [\d.]+\)"):
        diffbench.sample(Bad(), seeds=[0], nfe=6, solver="euler", device="cpu")


def test_load_names(gmm):
    assert isinstance(diffbench.load("gmm"), GaussianMixture)
    m = diffbench.load("gmm:components=5,shape=1x16x16,cov=diag,seed=3")
    assert m.sample_shape == (1, 16, 16) and m.means.shape == (5, 256) and m.diagonal
    with pytest.raises(UnknownNameError, match="option of 'gmm'"):
        load_builtin("gmm:compnents=2")
    with pytest.raises(ConfigError, match="shape"):
        load_builtin("gmm:shape=3xq")
    assert diffbench.load(gmm) is gmm


def test_gmm_denoiser_is_tweedie_exact():
    """D(x; sigma) = x + sigma^2 grad log p_sigma(x) (Tweedie / EDM Eq. 3) for the mixture, by autograd."""
    g = load_builtin("gmm:components=2,shape=3,cov=full,seed=4")
    x = torch.randn(5, 3, dtype=torch.float64)
    sigma = 0.7
    C = g.component_covs() + sigma**2 * torch.eye(3, dtype=torch.float64)
    xx = x.clone().requires_grad_()
    logp = torch.logsumexp(
        torch.stack(
            [
                torch.distributions.MultivariateNormal(g.means[k], C[k]).log_prob(xx) + g.weights[k].log()
                for k in range(2)
            ]
        ),
        0,
    )
    logp.sum().backward()
    want = x + sigma**2 * xx.grad
    assert torch.allclose(g(x, torch.full((5,), sigma, dtype=torch.float64)), want, atol=1e-7)


def test_gmm_moments_match_samples():
    g = load_builtin("gmm:components=3,shape=2,cov=full,seed=2")
    y = g.sample_data(200_000, torch.Generator().manual_seed(0))
    assert torch.allclose(y.mean(0), g.mean(), atol=0.01)
    assert torch.allclose(torch.cov(y.T), g.covariance(), atol=0.01)


def test_ideal_denoiser_is_softmax_weighted_mean():
    m = diffbench.load("ideal:n=5,shape=2")
    x = torch.randn(3, 2, dtype=torch.float64)
    s = 0.3
    w = torch.softmax(-((x[:, None] - m.points[None]) ** 2).sum(-1) / (2 * s * s), 1)
    assert torch.allclose(m(x, torch.full((3,), s, dtype=torch.float64)), w @ m.points, atol=1e-14)


def test_ideal_from_file(tmp_path):
    import numpy as np

    imgs = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=imgs)
    m = diffbench.load(f"ideal:path={tmp_path / 'd.npz'}")
    assert m.sample_shape == (3, 8, 8) and m.points.shape == (4, 192)
    # sampling the ideal denoiser with a fine deterministic solver lands on a training point
    out = diffbench.sample(m, seeds=[0], solver="heun", steps=64, device="cpu")
    d = ((out.images.reshape(1, -1) - m.points) ** 2).sum(-1).min()
    assert float(d) < 1e-3


def test_reference_solution_of_a_single_gaussian_is_closed_form():
    """For N(mu, s0^2 I), x(sigma) = mu + (x0 - mu) sqrt((s0^2 + sigma^2)/(s0^2 + sigma0^2)) (EDM ODE)."""
    mu, s0 = 0.3, 0.5
    g = GaussianMixture(
        weights=[1.0],
        means=torch.full((1, 4), mu, dtype=torch.float64),
        covs=torch.full((1, 4), s0**2, dtype=torch.float64),
    )
    x0 = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 80
    got = reference_solution(g, x0, sigma_from=80.0, sigma_to=0.002)
    want = mu + (x0 - mu) * math.sqrt((s0**2 + 0.002**2) / (s0**2 + 80.0**2))
    assert torch.allclose(got, want, rtol=1e-8, atol=1e-9)
