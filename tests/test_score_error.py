"""score-error: the held-out denoising loss per sigma, EDM-weighted, on a model whose loss is known in closed
form; the digits family's loss falls with training; the command's table and its refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import one_error_line

from diffbench.errors import ConfigError
from diffbench.metrics.score_error import P_MEAN, P_STD, edm_weight, score_error, training_average, training_nodes


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


def test_total_is_the_expectation_under_the_training_density_whatever_the_levels():
    # Zero model, x0 = 1: weighted loss = lambda(sigma) exactly, so E = 1/sd^2 + E[sigma^-2]
    # = 4 + exp(-2 P_mean + 2 P_std^2) (log-normal moment), the heaviest term the quadrature meets
    exact = 1 / 0.25 + math.exp(-2 * P_MEAN + 2 * P_STD**2)
    for levels in ([0.5], [0.01, 1.0, 50.0]):
        assert score_error(Zero(), _images(n=4), sigmas=levels).total == pytest.approx(exact, rel=1e-6)
    s, w = training_nodes()
    assert sum(w) == pytest.approx(1.0) and len(s) == 12
    assert sum(wi * math.log(si) for si, wi in zip(s, w, strict=True)) == pytest.approx(P_MEAN)


def test_total_on_the_digits_model_ignores_the_display_grid_and_matches_a_direct_average():
    from diffbench.models.builtin import digits_data
    from diffbench.models.load import load

    held, _ = digits_data().split("heldout")
    x = [torch.from_numpy(held[:64])]
    model = load("digits-edm")
    r3, r5 = (score_error(model, x, sigmas=np.geomspace(0.002, 80, k).tolist(), seed=1) for k in (3, 5))
    assert r3.total == r5.total and r3.total_se > 0  # the nodes' noise is apart from the levels'
    # direct Monte Carlo: sigma_j drawn from ln sigma ~ N(P_mean, P_std^2), one noise draw each; its s.e. is
    # the spread of the per-sigma losses / sqrt(M); 4 joint s.e. is a 1-in-15,000 false alarm
    m = 150
    sig = np.exp(P_MEAN + P_STD * np.random.default_rng(0).standard_normal(m)).tolist()
    direct = score_error(model, x, sigmas=sig, seed=2)
    mc, mc_se = float(np.mean(direct.weighted)), float(np.std(direct.weighted, ddof=1)) / math.sqrt(m)
    assert abs(r3.total - mc) < 4 * math.hypot(mc_se, r3.total_se), (r3.total, mc, mc_se, r3.total_se)


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
    headline = out.splitlines()[-1]
    assert png.stat().st_size > 1000
    again = ("score-error", "digits-edm@2000", "--data", "digits-data:heldout", "--levels", "2", "--repeats", "1")
    code, out, err = cli(*again, "--plot", png, "--device", "cpu")  # refused before any work: nothing printed
    assert "--overwrite" in one_error_line(code, err) and code == 1 and out == ""
    png.write_bytes(b"old")
    code, out, err = cli(*again, "--plot", png, "--device", "cpu", "--overwrite")
    assert code == 0 and png.stat().st_size > 1000, err
    assert out.splitlines()[-1] == headline  # 2 levels or 3, the same images: one total
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
