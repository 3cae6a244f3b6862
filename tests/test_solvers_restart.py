"""Restart sampling as published (Xu et al. 2023): the paper's parameters and NFE, and the update written out
here from the paper (Alg. 1, Eq. 4) and its reference code's conventions, matched noise, float64 rounding."""

from __future__ import annotations

import math

import pytest
import torch

import diffbench
from diffbench.errors import ConfigError, DiffbenchError
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.plan import plan
from diffbench.sampling.solvers import get_solver

MODEL = diffbench.load("gmm")


def D(x, sigma):
    return MODEL(x, torch.full((x.shape[0],), float(sigma), dtype=torch.float64))


class Recording(NoiseSource):
    """Per-seed streams that remember every step draw, in the order the solver asked for them."""

    def __init__(self, seeds):
        super().__init__(seeds)
        self.draws = []

    def step(self, i, like):
        out = super().step(i, like)
        self.draws.append(out)
        return out


def edm_steps(n, lo, hi, rho=7.0):
    # EDM Eq. 5 with n points from hi to lo
    return [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)]


def reference_restart(x, t_steps, *, N, K, tmin, tmax, gamma, S_min, S_max, S_noise, draws):
    """Restart as the paper's reference code runs it: Heun on the main grid (no correction on the step to 0);
    after main step i with i + 1 the grid index nearest tmin, K times: x += sqrt(tmax^2 - t^2) S_noise eps, then
    Heun on the rho = 7 grid of N points from tmax to t, each inner step from t first churned to t (1 + gamma)
    when S_min <= t <= S_max."""
    draws = iter(draws)
    idx = min(range(len(t_steps)), key=lambda k: abs(t_steps[k] - tmin))

    def heun_step(x, t, t_next):
        d = (x - D(x, t)) / t
        x_next = x + (t_next - t) * d
        if t_next > 0:
            x_next = x + (t_next - t) * 0.5 * (d + (x_next - D(x_next, t_next)) / t_next)
        return x_next

    for i in range(len(t_steps) - 1):
        x = heun_step(x, t_steps[i], t_steps[i + 1])
        if i + 1 == idx:
            for _ in range(K):
                inner = edm_steps(N, t_steps[idx], tmax)
                x = x + next(draws) * math.sqrt(inner[0] ** 2 - inner[-1] ** 2) * S_noise
                for t, t_next in zip(inner[:-1], inner[1:]):
                    g = gamma if S_min <= t <= S_max else 0.0
                    t_hat = t + g * t
                    if g > 0:
                        x = x + math.sqrt(t_hat**2 - t**2) * S_noise * next(draws)
                    x = heun_step(x, t_hat, t_next)
    assert next(draws, None) is None  # every draw the solver made was used
    return x


@pytest.mark.parametrize(
    "config",
    [
        {},  # the paper's CIFAR-10 setting [3, 2, 0.06, 0.30], deterministic inner steps
        {"restart_gamma": 0.05, "S_min": 0.01, "S_max": 1.0, "S_noise": 1.003},  # as the paper's commands run it
        {"restart_n": 5, "restart_k": 3, "restart_tmin": 0.14, "restart_tmax": 0.5, "restart_gamma": 0.05},
    ],
)
def test_restart_equals_the_written_out_reference(config):
    sigmas = plan(MODEL, solver="restart", schedule="edm", steps=18, solver_options=config).sigmas
    seeds = [3, 4]
    noise = Recording(seeds)
    x0 = noise.latents(MODEL.sample_shape).double() * float(sigmas[0])
    got = get_solver("restart").fn(D, x0, sigmas, noise=noise, **config)
    opts = {**get_solver("restart").defaults(), **config}
    want = reference_restart(
        x0,
        sigmas.tolist(),
        N=opts["restart_n"],
        K=opts["restart_k"],
        tmin=opts["restart_tmin"],
        tmax=opts["restart_tmax"],
        gamma=opts["restart_gamma"],
        S_min=opts["S_min"],
        S_max=opts["S_max"],
        S_noise=opts["S_noise"],
        draws=noise.draws,
    )
    assert len(noise.draws) == opts["restart_k"] * (1 + (opts["restart_n"] - 1) * (opts["restart_gamma"] > 0))
    assert torch.allclose(got, want, rtol=0, atol=1e-12), float((got - want).abs().max())


def test_published_cifar10_setting_costs_43_nfe_at_18_steps():
    """Table 3's [N_Restart, K, t_min, t_max] = [3, 2, 0.06, 0.30] with 18 main steps: 35 + 2 x 2 x 2 = 43 NFE."""
    assert plan(MODEL, solver="restart", schedule="edm", steps=18).nfe == 43
    p = plan(MODEL, solver="restart", schedule="edm", nfe=43)
    assert p.steps == 18
    out = diffbench.sample(MODEL, seeds=[0], solver="restart", nfe=43, device="cpu")
    assert out.provenance["solver_options"]["restart_n"] == 3 and out.provenance["solver_options"]["restart_k"] == 2


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"restart_n": 1}, "restart_n"),
        ({"restart_k": -1}, "restart_k"),
        ({"restart_tmin": 0.5, "restart_tmax": 0.3}, "restart_tmin < restart_tmax"),
        ({"restart_gamma": 1.0}, "restart_gamma"),
        ({"S_min": 2.0, "S_max": 1.0}, "churn window"),
        ({"restart_steps": 3}, "unknown sampler option 'restart_steps'"),
    ],
)
def test_bad_restart_options_are_one_line(kw, message):
    from diffbench.sampling.spec import SamplerSpec

    with pytest.raises(DiffbenchError, match=message) as exc:
        SamplerSpec.make(solver="restart", nfe=43, **kw)
    assert "\n" not in str(exc.value)


def test_restart_inner_churn_only_inside_the_window():
    """restart_gamma with a window that excludes the restart interval changes nothing."""
    a = diffbench.sample(MODEL, seeds=[0, 1], solver="restart", nfe=43, device="cpu")
    b = diffbench.sample(
        MODEL, seeds=[0, 1], solver="restart", nfe=43, restart_gamma=0.05, S_min=2.0, S_max=3.0, device="cpu"
    )
    c = diffbench.sample(MODEL, seeds=[0, 1], solver="restart", nfe=43, restart_gamma=0.05, device="cpu")
    assert torch.equal(a.images, b.images) and not torch.allclose(a.images, c.images, atol=1e-6)


def test_restart_tmax_below_the_restart_point_is_refused():
    with pytest.raises(ConfigError, match="restart_tmax"):
        diffbench.sample(MODEL, seeds=[0], solver="restart", nfe=43, restart_tmin=0.5, restart_tmax=0.55)
