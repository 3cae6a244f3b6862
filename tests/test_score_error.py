"""score-error: the held-out denoising loss per sigma, EDM-weighted, on a model whose loss is known in closed
form; the digits family's loss falls with training; the command's table and its refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import one_error_line

from diffbench.errors import ConfigError
from diffbench.metrics.score_error import edm_weight, score_error, training_average


class Zero(torch.nn.Module):
    """D(x; sigma) = 0 on 1x2x2 images: the loss is |x0|^2 / dim exactly, whatever the noise."""

    img_channels, img_resolution, label_dim, sigma_min, sigma_max, sigma_data = 1, 2, 0, 0.0, math.inf, 0.5

    def forward(self, x, sigma, class_labels=None):
        return torch.zeros_like(x)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


class Identity(Zero):
    """D(x; sigma) = x: the loss is sigma^2 E n^2 per dimension."""

    def forward(self, x, sigma, class_labels=None):
        return x


def _images(n=64, value=255):
    return [torch.full((n, 1, 2, 2), value, dtype=torch.uint8)]


def test_closed_form_losses():
    sig = [0.1, 1.0, 10.0]
    r = score_error(Zero(), _images(value=255), sigmas=sig)  # x0 = 1 everywhere
    assert r.mse == pytest.approx([1.0] * 3)
    assert r.weighted == pytest.approx([edm_weight(s, 0.5) for s in sig])
    assert r.weighted_se == pytest.approx([0.0] * 3, abs=1e-12) and r.n == 64
    r = score_error(Identity(), _images(n=4000), sigmas=sig, repeats=2, seed=3)
    assert r.mse == pytest.approx([s**2 for s in sig], rel=0.05)
    assert edm_weight(1.0, 0.5) == pytest.approx((1 + 0.25) / 0.25)  # (s^2 + sd^2) / (s sd)^2, EDM Table 1


def test_training_average_is_a_weighted_mean():
    s = list(np.exp(np.linspace(np.log(0.002), np.log(80), 9)))
    assert training_average(s, [2.0] * 9) == pytest.approx(2.0)
    v = [1.0 if x < math.exp(-1.2) else 3.0 for x in s]
    assert 1.0 < training_average(s, v) < 3.0
    assert training_average([0.5], [7.0]) == 7.0


def test_refusals():
    with pytest.raises(ConfigError, match="do not fit the model"):
        score_error(Zero(), [torch.zeros(2, 3, 2, 2, dtype=torch.uint8)], sigmas=[1.0])
    with pytest.raises(ConfigError, match="no images"):
        score_error(Zero(), [], sigmas=[1.0])
    with pytest.raises(ConfigError, match="finite numbers > 0"):
        score_error(Zero(), _images(), sigmas=[0.0])


def test_loss_falls_with_training_on_the_digits_family():
    from diffbench.models.builtin import digits_data
    from diffbench.models.load import load

    held, _ = digits_data().split("heldout")
    x = [torch.from_numpy(held[:100])]
    loss = {s: score_error(load(f"digits-edm@{s}"), x, sigmas=[0.05, 0.5, 5.0]).total for s in (250, 2000)}
    assert loss[2000] < loss[250]


def test_cli_table_plot_and_other_shape(cli, tmp_path):
    png = tmp_path / "loss.png"
    code, out, err = cli(
        "score-error",
        "digits-edm@2000",
        "--data",
        "digits:heldout",
        "--levels",
        "3",
        "--repeats",
        "1",
        "--plot",
        png,
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert "EDM-weighted held-out loss" in out and len([ln for ln in out.splitlines() if ln.strip()]) == 6
    assert png.stat().st_size > 1000
    again = ("score-error", "digits-edm@2000", "--data", "digits-data:heldout", "--levels", "2", "--repeats", "1")
    code, out, err = cli(*again, "--plot", png, "--device", "cpu")  # refused before any work: nothing printed
    assert "--overwrite" in one_error_line(code, err) and code == 1 and out == ""
    png.write_bytes(b"old")
    code, out, err = cli(*again, "--plot", png, "--device", "cpu", "--overwrite")
    assert code == 0 and png.stat().st_size > 1000, err
    other = tmp_path / "rgb.npz"
    np.savez(other, images=np.zeros((4, 16, 16, 3), dtype=np.uint8))
    code, _, err = cli("score-error", "digits-edm", "--data", other, "--levels", "2", "--device", "cpu")
    assert "do not fit the model" in one_error_line(code, err) and code == 2
    code, _, err = cli("score-error", "digits-edm", "--data", "digits:test", "--device", "cpu")
    assert "heldout" in one_error_line(code, err) and code == 2
    code, _, err = cli("score-error", "digits-edm", "--data", tmp_path / "nope", "--device", "cpu")
    assert "digits-data[:train|heldout|all]" in one_error_line(code, err) and code == 2
    code, _, err = cli("score-error", "digits-edm", "--data", "digits:heldout", "--plot", tmp_path / "x.jpg")
    assert ".png" in one_error_line(code, err) and code == 2
