"""Preconditioning (EDM Table 1) and the discrete-DDPM wrapper: exact coefficients and predictions."""

from __future__ import annotations

import math

import pytest
import torch

from diffbench.models.precond import (
    DiscreteDDPMPrecond,
    EDMPrecond,
    IDDPMPrecond,
    VEPrecond,
    VPPrecond,
    linear_betas,
)


class Record(torch.nn.Module):
    """Raw network that records its inputs and returns a fixed output."""

    def __init__(self, out_channels=3):
        super().__init__()
        self.seen = None
        self.out_channels = out_channels

    def forward(self, x, noise_labels, class_labels=None):
        self.seen = (x.clone(), noise_labels.clone(), class_labels)
        return torch.ones(x.shape[0], self.out_channels, *x.shape[2:]) * 0.25


def run(precond, sigma):
    x = torch.full((2, 3, 4, 4), 1.5)
    out = precond(x, torch.full((2,), sigma, dtype=torch.float64))
    return x, out, precond.model.seen


def test_edm_coefficients():
    p = EDMPrecond(Record(), img_resolution=4, img_channels=3)
    s, sd = 2.0, 0.5
    x, out, (x_in, c_noise, _) = run(p, s)
    assert torch.allclose(x_in, x / math.sqrt(s * s + sd * sd))
    assert torch.allclose(c_noise, torch.full((2,), math.log(s) / 4))
    want = sd**2 / (s * s + sd**2) * 1.5 + s * sd / math.sqrt(s * s + sd**2) * 0.25
    assert torch.allclose(out, torch.full_like(out, want))


def test_vp_coefficients_and_range():
    p = VPPrecond(Record(), img_resolution=4, img_channels=3)
    assert p.sigma_min == 0.0009765625  # float32 arithmetic, as EDM (REFERENCE §2)
    assert p.sigma_max == pytest.approx(152.17, rel=1e-4)
    s = 3.0
    x, out, (x_in, c_noise, _) = run(p, s)
    t = (math.sqrt(0.1**2 + 2 * 19.9 * math.log(s * s + 1)) - 0.1) / 19.9
    assert torch.allclose(c_noise, torch.full((2,), 999 * t))
    assert torch.allclose(x_in, x / math.sqrt(s * s + 1))
    assert torch.allclose(out, torch.full_like(out, 1.5 - s * 0.25))


def test_ve_coefficients():
    p = VEPrecond(Record(), img_resolution=4, img_channels=3)
    x, out, (x_in, c_noise, _) = run(p, 4.0)
    assert torch.equal(x_in, x) and torch.allclose(c_noise, torch.full((2,), math.log(2.0)))
    assert torch.allclose(out, torch.full_like(out, 1.5 + 4 * 0.25))


def test_iddpm_uses_first_channels_and_index_noise():
    p = IDDPMPrecond(Record(out_channels=6), img_resolution=4, img_channels=3)
    s = float(p.u[100])
    x, out, (_, c_noise, _) = run(p, s)
    assert out.shape == (2, 3, 4, 4)
    assert c_noise.tolist() == [999 - 100] * 2
    assert torch.allclose(out, torch.full_like(out, 1.5 - s * 0.25), rtol=1e-6)


def test_fp16_only_on_cuda():
    p = EDMPrecond(Record(), img_resolution=4, img_channels=3, use_fp16=True)
    _, _, (x_in, _, _) = run(p, 1.0)
    assert x_in.dtype == torch.float32


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_discrete_ddpm_predictions_recover_x0(prediction):
    """A raw network that predicts the truth (eps, v or x0) must give D(x; sigma) = x0 exactly."""
    betas = linear_betas()
    x0 = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    eps = torch.randn(2, 3, 4, 4, dtype=torch.float64)

    class Oracle(torch.nn.Module):
        def forward(self, x_t, t, class_labels=None):
            abar = torch.cumprod(1 - torch.as_tensor(betas), 0)[t.long()].reshape(-1, 1, 1, 1)
            a, s = abar.sqrt(), (1 - abar).sqrt()
            if prediction == "epsilon":
                return eps.float()
            if prediction == "v_prediction":
                return (a * eps - s * x0).float()  # Salimans & Ho 2022, v = alpha eps - sigma x0
            return x0.float()

    p = DiscreteDDPMPrecond(Oracle(), betas=betas, prediction=prediction, img_resolution=4, img_channels=3)
    k = 500
    sigma = float(p.sigmas[k])
    x = x0 + sigma * eps  # EDM space: x = x_t / sqrt(abar)
    out = p(x, torch.full((2,), sigma, dtype=torch.float64))
    assert torch.allclose(out.double(), x0, atol=2e-4 * max(1.0, sigma))
    assert p.round_sigma(torch.tensor(sigma * 1.0001, dtype=torch.float64)) == pytest.approx(sigma)


def test_discrete_rejects_unknown_prediction():
    from diffbench.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="prediction type"):
        DiscreteDDPMPrecond(Record(), betas=linear_betas(), prediction="eps", img_resolution=4, img_channels=3)
