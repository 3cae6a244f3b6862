"""Solver trajectories against loops written out here from the papers, given the same noise.

The deterministic and churn samplers are compared with EDM's Algorithms 1-2 in their general form (sigma(t),
s(t), alpha; Karras et al. 2022, Alg. 1-2 and App. D.1) written below, run through the public `sample` so
that every option's wiring is part of the check. The stochastic ones (euler-ancestral, DDIM with eta,
SDE-DPM-Solver++(2M)) are compared with their update rules written out, fed the per-seed stream that
REFERENCE §1 specifies (one generator per seed: latents, then one standard normal per step), reproduced
here with torch.Generator directly. Agreement is to float64 rounding: a changed coefficient (alpha, a
noise amplitude, S_noise, S_min/S_max) moves the result by far more than the tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch

import diffbench
from diffbench.sampling.solvers import get_solver

MODEL = diffbench.load("gmm:shape=3x4x4")
SEEDS = [3, 11, 40]
SHAPE = tuple(MODEL.sample_shape)


def D(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return MODEL(x, torch.full((x.shape[0],), float(sigma), dtype=torch.float64))


class Streams:
    """REFERENCE §1's per-seed streams, from torch.Generator directly: latents (float32), then step normals."""

    def __init__(self, seeds):
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.latents = torch.stack([torch.randn(SHAPE, generator=g) for g in self.gens]).double()

    def next(self) -> torch.Tensor:
        return torch.stack([torch.randn(SHAPE, generator=g, dtype=torch.float64) for g in self.gens])


def assert_close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-10) -> None:
    err = float((got - want).abs().max())
    assert err <= tol * max(1.0, float(want.abs().max())), err


# --- EDM Algorithm 1 (general sigma(t), s(t)) with Algorithm 2's churn, written out -------------------------


class Axes:
    """sigma(t), its inverse and derivative, s(t) and s'(t) of EDM Table 1."""

    def __init__(self, sigma_t: str, scaling: str, sigma_min: float, sigma_max: float, eps_s: float = 1e-3):
        self.kind, self.scaling = sigma_t, scaling
        # EDM App. D.1: beta_d, beta_min fitted to the sigma range
        self.bd = 2 * (math.log(sigma_min**2 + 1) / eps_s - math.log(sigma_max**2 + 1)) / (eps_s - 1)
        self.bm = math.log(sigma_max**2 + 1) - 0.5 * self.bd

    def sigma(self, t):
        if self.kind == "vp":
            return math.sqrt(math.expm1(0.5 * self.bd * t**2 + self.bm * t))  # exp(.) - 1, without cancellation
        return math.sqrt(t) if self.kind == "ve" else t

    def inv(self, sig):
        if self.kind == "vp":
            return (math.sqrt(self.bm**2 + 2 * self.bd * math.log1p(sig**2)) - self.bm) / self.bd  # log(sig^2 + 1)
        return sig**2 if self.kind == "ve" else sig

    def dsigma(self, t):
        if self.kind == "vp":
            sig = self.sigma(t)
            return 0.5 * (self.bm + self.bd * t) * (sig + 1 / sig)
        return 0.5 / math.sqrt(t) if self.kind == "ve" else 1.0

    def s(self, t):
        return 1 / math.sqrt(1 + self.sigma(t) ** 2) if self.scaling == "vp" else 1.0

    def ds(self, t):
        return -self.sigma(t) * self.dsigma(t) * self.s(t) ** 3 if self.scaling == "vp" else 0.0


def edm_algorithm(
    sigmas, latents, streams, ax: Axes, *, heun, alpha=1.0, S_churn=0.0, S_min=0.0, S_max=math.inf, S_noise=1.0
):
    """EDM Alg. 1 (general ODE, alpha) + Alg. 2 (churn); `sigmas` is the grid with its final 0 if any."""
    sig = [float(s) for s in sigmas]
    N = len(sig) - 1
    t = [ax.inv(s) if s > 0 else 0.0 for s in sig]

    def slope(x, tt):
        # EDM Eq. 4: dx/dt = (sigma'/sigma + s'/s) x - (sigma' s / sigma) D(x / s; sigma)
        sg, dsg, s, ds = ax.sigma(tt), ax.dsigma(tt), ax.s(tt), ax.ds(tt)
        return (dsg / sg + ds / s) * x - dsg * s / sg * D(x / s, sg)

    x = latents * ax.sigma(t[0]) * ax.s(t[0])
    for i in range(N):
        eps = streams.next()  # EDM draws one normal per step, used or not
        gamma = min(S_churn / N, math.sqrt(2) - 1) if S_min <= ax.sigma(t[i]) <= S_max else 0.0
        t_hat = ax.inv(ax.sigma(t[i]) + gamma * ax.sigma(t[i]))
        x_hat = (
            ax.s(t_hat) / ax.s(t[i]) * x
            + math.sqrt(max(ax.sigma(t_hat) ** 2 - ax.sigma(t[i]) ** 2, 0.0)) * ax.s(t_hat) * S_noise * eps
        )
        h = t[i + 1] - t_hat
        d = slope(x_hat, t_hat)
        if not heun or sig[i + 1] == 0:
            x = x_hat + h * d
        else:
            d2 = slope(x_hat + alpha * h * d, t_hat + alpha * h)
            x = x_hat + h * ((1 - 1 / (2 * alpha)) * d + d2 / (2 * alpha))
    return x / ax.s(t[-1]) if sig[-1] > 0 else x


def run(solver: str, **kw):
    out = diffbench.sample(MODEL, seeds=SEEDS, solver=solver, device="cpu", batch=2, **kw)
    return out, Streams(SEEDS)


def axes_tol(sigma_t: str) -> float:
    """On the VP time axis, t = sigma^-1(sigma) and the large first steps (sigma 152 -> 25 in t) cancel large
    terms: two roundings of the same formulas (code and test) then differ by up to ~5e-8 at some step counts.
    A changed coefficient moves the result by more than 1e-3 (test_alpha_and_axes_change_the_result)."""
    return 1e-7 if sigma_t == "vp" else 1e-10


AXES = [
    ("linear", "none", "edm"),
    ("vp", "vp", "vp"),
    ("vp", "none", "edm"),
    ("linear", "vp", "edm"),
    ("ve", "none", "ve"),
    ("ve", "vp", "linear"),
]


@pytest.mark.parametrize("endpoint", ("edm", "sigma_min"))
@pytest.mark.parametrize("alpha", (1.0, 0.5))
@pytest.mark.parametrize("sigma_t,scaling,schedule", AXES)
def test_heun_alpha_and_ode_axes_follow_edm_algorithm_1(alpha, sigma_t, scaling, schedule, endpoint):
    out, st = run("heun", schedule=schedule, steps=7, alpha=alpha, sigma_t=sigma_t, scaling=scaling, endpoint=endpoint)
    ax = Axes(sigma_t, scaling, out.plan.sigma_min, out.plan.sigma_max)
    want = edm_algorithm(out.sigmas, st.latents, st, ax, heun=True, alpha=alpha)
    assert_close(out.images, want, tol=axes_tol(sigma_t))


@pytest.mark.parametrize("endpoint", ("edm", "sigma_min"))
@pytest.mark.parametrize("sigma_t,scaling,schedule", AXES[1::2])
def test_euler_ode_axes_follow_edm_algorithm_1(sigma_t, scaling, schedule, endpoint):
    out, st = run("euler", schedule=schedule, steps=9, sigma_t=sigma_t, scaling=scaling, endpoint=endpoint)
    ax = Axes(sigma_t, scaling, out.plan.sigma_min, out.plan.sigma_max)
    assert_close(out.images, edm_algorithm(out.sigmas, st.latents, st, ax, heun=False), tol=axes_tol(sigma_t))


def test_alpha_and_axes_change_the_result():
    """The options above are not no-ops at this budget (else the comparisons could not catch their loss)."""
    base = run("heun", steps=7)[0].images
    for kw in ({"alpha": 0.5}, {"sigma_t": "vp"}, {"scaling": "vp"}, {"sigma_t": "ve"}):
        assert float((run("heun", steps=7, **kw)[0].images - base).abs().max()) > 1e-3, kw


@pytest.mark.parametrize("endpoint", ("edm", "sigma_min"))
def test_heun_under_sigma_min_endpoint_corrects_every_step(endpoint):
    out, st = run("heun", steps=6, endpoint=endpoint, alpha=0.3)
    want = edm_algorithm(out.sigmas, st.latents, st, Axes("linear", "none", 0.002, 80), heun=True, alpha=0.3)
    assert_close(out.images, want)


CHURN = [
    {"S_churn": 40.0, "S_min": 0.05, "S_max": 1.0, "S_noise": 1.007},  # EDM's ImageNet setting, cut range
    {"S_churn": 30.0, "S_min": 0.5, "S_max": 20.0, "S_noise": 1.5},
    {"S_churn": 5.0, "S_noise": 0.5},  # full range, small gamma
    {"S_churn": 80.0, "S_min": 0.01, "S_max": 1e9, "S_noise": 1.0},  # gamma clipped at sqrt(2) - 1
]


@pytest.mark.parametrize("solver", ("heun", "euler"))
@pytest.mark.parametrize("churn", CHURN, ids=range(len(CHURN)))
def test_churn_follows_edm_algorithm_2_with_the_same_noise(solver, churn):
    out, st = run(solver, steps=10, **churn)
    want = edm_algorithm(out.sigmas, st.latents, st, Axes("linear", "none", 0.002, 80), heun=solver == "heun", **churn)
    assert_close(out.images, want)


def test_churn_with_ode_axes_follows_edm_algorithm():
    kw = {"S_churn": 20.0, "S_min": 0.1, "S_max": 10.0, "S_noise": 1.01}
    out, st = run("heun", schedule="vp", steps=8, sigma_t="vp", scaling="vp", alpha=0.7, **kw)
    ax = Axes("vp", "vp", out.plan.sigma_min, out.plan.sigma_max)
    assert_close(out.images, edm_algorithm(out.sigmas, st.latents, st, ax, heun=True, alpha=0.7, **kw))


@pytest.mark.parametrize("solver", ("heun", "euler"))
def test_churn_per_step_is_gamma(solver):
    out, st = run(solver, steps=8, churn_per_step=0.2, S_min=0.1, S_max=5.0)
    n = len(out.sigmas) - 1  # churn_per_step = gamma: S_churn = gamma N in EDM's form
    want = edm_algorithm(
        out.sigmas,
        st.latents,
        st,
        Axes("linear", "none", 0.002, 80),
        heun=solver == "heun",
        S_churn=0.2 * n,
        S_min=0.1,
        S_max=5.0,
    )
    assert_close(out.images, want)


@pytest.mark.parametrize("churn", CHURN[:2], ids=range(2))
def test_s_min_s_max_cut_some_steps(churn):
    """The cut settings leave gamma > 0 on some steps and 0 on others, so a lost S_min or S_max is seen."""
    sig = run("heun", steps=10)[0].sigmas[:-1]
    inside = [(churn["S_min"] <= float(s) <= churn["S_max"]) for s in sig]
    assert any(inside) and not all(inside)


# --- ancestral, DDIM(eta) and SDE-DPM-Solver++(2M), written out ----------------------------------------------


def ancestral_reference(sigmas, st, *, eta, S_noise):
    """Euler to sigma_down, then N(0, sigma_up^2) (Song et al. 2021a Eq. 16 in sigma space; DDPM at eta 1)."""
    sig = [float(s) for s in sigmas]
    x = st.latents * sig[0]
    for i in range(len(sig) - 1):
        s, s2 = sig[i], sig[i + 1]
        eps = st.next()
        up = min(s2, eta * math.sqrt(s2**2 * (s**2 - s2**2) / s**2)) if s2 > 0 else 0.0
        down = math.sqrt(s2**2 - up**2)
        x = x + (down - s) * (x - D(x, s)) / s + S_noise * up * eps
    return x


def ddim_reference(sigmas, st, *, eta):
    """DDIM Eq. 12 with sigma_eta of Eq. 16, abar = 1 / (1 + sigma^2), mapped back to EDM space."""
    sig = [float(s) for s in sigmas]
    x = st.latents * sig[0]
    for i in range(len(sig) - 1):
        s, s2 = sig[i], sig[i + 1]
        eps_draw = st.next()
        a, a2 = 1 / (1 + s * s), 1 / (1 + s2 * s2)
        x0 = D(x, s)
        e = (x - x0) / s
        se = eta * math.sqrt((1 - a2) / (1 - a)) * math.sqrt(1 - a / a2)
        x_vp = math.sqrt(a2) * x0 + math.sqrt(1 - a2 - se**2) * e + se * eps_draw
        x = x_vp / math.sqrt(a2)
    return x


def sde_dpmpp_2m_reference(sigmas, st, *, eta, S_noise, lower_final):
    """SDE-DPM-Solver++(2M), midpoint form (Lu et al. 2022b Sec. 5) with noise sigma' sqrt(1 - e^{-2 eta h})."""
    sig = [float(s) for s in sigmas]
    n = len(sig) - 1
    x = st.latents * sig[0]
    prev = None
    for i in range(n):
        s, s2 = sig[i], sig[i + 1]
        eps = st.next()
        x0 = D(x, s)
        if s2 == 0:
            x = x0
        else:
            h = math.log(s / s2)
            x = (s2 / s) * math.exp(-eta * h) * x + (1 - math.exp(-(1 + eta) * h)) * x0
            if prev is not None and not (lower_final and i == n - 1):
                r = math.log(prev[0] / s) / h
                x = x + 0.5 * (1 - math.exp(-(1 + eta) * h)) * (x0 - prev[1]) / r
            x = x + s2 * math.sqrt(1 - math.exp(-2 * eta * h)) * S_noise * eps
        prev = (s, x0)
    return x


@pytest.mark.parametrize(
    "eta,S_noise,endpoint", [(1.0, 1.0, "edm"), (0.5, 1.0, "sigma_min"), (1.0, 0.7, "edm"), (0.3, 1.3, "sigma_min")]
)
def test_euler_ancestral_with_the_same_noise(eta, S_noise, endpoint):
    out, st = run("euler-ancestral", steps=8, eta=eta, S_noise=S_noise, endpoint=endpoint)
    assert_close(out.images, ancestral_reference(out.sigmas, st, eta=eta, S_noise=S_noise))


@pytest.mark.parametrize("eta,endpoint", [(1.0, "edm"), (0.4, "sigma_min")])
def test_ddim_eta_with_the_same_noise(eta, endpoint):
    out, st = run("ddim", steps=8, eta=eta, endpoint=endpoint)
    assert_close(out.images, ddim_reference(out.sigmas, st, eta=eta))


@pytest.mark.parametrize(
    "eta,S_noise,endpoint,lof",
    [
        (1.0, 1.0, "edm", "always"),
        (0.5, 1.0, "sigma_min", "always"),
        (1.0, 0.8, "sigma_min", "never"),
        (2.0, 1.1, "edm", "never"),
    ],
)
def test_dpmpp_2m_sde_with_the_same_noise(eta, S_noise, endpoint, lof):
    out, st = run("dpmpp-2m-sde", steps=8, eta=eta, S_noise=S_noise, endpoint=endpoint, lower_order_final=lof)
    want = sde_dpmpp_2m_reference(out.sigmas, st, eta=eta, S_noise=S_noise, lower_final=lof == "always")
    assert_close(out.images, want)


def test_noise_amplitudes_matter_at_these_settings():
    """S_noise and eta each move the sample by much more than the tolerance above."""
    for solver, a, b in [
        ("euler-ancestral", {"S_noise": 0.7}, {}),
        ("euler-ancestral", {"eta": 0.5}, {}),
        ("dpmpp-2m-sde", {"S_noise": 0.8}, {}),
        ("dpmpp-2m-sde", {"eta": 0.5}, {}),
        ("ddim", {"eta": 0.4}, {"eta": 1.0}),
    ]:
        x, y = run(solver, steps=8, **a)[0].images, run(solver, steps=8, **b)[0].images
        assert float((x - y).abs().max()) > 1e-2, (solver, a)


def test_restart_with_no_restarts_is_edm_heun():
    """Generic: restart with K = 0 runs Heun on the main grid (the inner-grid parameters are being redefined)."""
    info = get_solver("restart")
    st = Streams(SEEDS)
    sig = diffbench.sample(MODEL, seeds=SEEDS, solver="heun", steps=8, device="cpu").sigmas
    got = info.fn(D, st.latents * float(sig[0]), sig, noise=None, restart_k=0)
    want = edm_algorithm(sig, st.latents, st, Axes("linear", "none", 0.002, 80), heun=True)
    assert_close(got, want)
