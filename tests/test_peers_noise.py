"""Stochastic solvers and UniPC's variants against diffusers' schedulers, with the same injected noise.

diffusers draws its step noise itself; here each scheduler is handed a fixed list of standard normals (through
its `variance_noise` argument, or by replacing its `randn_tensor`), and diffbench's solver gets the same
normals through a noise source that returns the i-th one at step i. The final samples must then agree to
diffusers' float32 rounding, so a wrong noise amplitude (eta, sqrt(1 - e^{-2h}), sigma_up) is caught.
"""

from __future__ import annotations

import pytest
import torch

from diffbench.sampling.solvers import get_solver

diffusers = pytest.importorskip("diffusers", reason="diffusers is the peer these tests compare against")
pytestmark = pytest.mark.filterwarnings("ignore")

from test_peers import STEPS, D, Z  # noqa: E402  (the shared deterministic drivers)

NOISE = torch.randn((STEPS, *Z.shape), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
TOL = 2e-5  # diffusers keeps sigmas and the sample in float32


class Injected:
    """A noise source whose step i is NOISE[i] (what diffbench's solvers ask of NoiseSource)."""

    def __init__(self):
        self.asked: list[int] = []

    def step(self, i, like):
        self.asked.append(i)
        return NOISE[i].to(like.dtype)

    def increment(self, i, sigma, sigma_next, like):
        return self.step(i, like)


def vp_grid(scheduler) -> tuple[torch.Tensor, torch.Tensor]:
    """EDM sigmas of the scheduler's timesteps (and a final 0) and the matching EDM start state."""
    scheduler.set_timesteps(STEPS)
    abar = scheduler.alphas_cumprod.double()[scheduler.timesteps]
    sig = ((1 - abar) / abar).sqrt()
    return torch.cat([sig, sig.new_zeros(1)]), Z * (1 + sig[0] ** 2).sqrt()


def drive_vp(scheduler, **step_kw) -> torch.Tensor:
    """diffusers' loop in VP space from x_T = Z, driven by the exact epsilon, noise i given at step i."""
    scheduler.set_timesteps(STEPS)
    abar = scheduler.alphas_cumprod.double()
    x = Z.clone()
    for i, t in enumerate(scheduler.timesteps):
        a, s = abar[t].sqrt(), ((1 - abar[t]) / abar[t]).sqrt()
        x_edm = x / a
        x = scheduler.step((x_edm - D(x_edm, s)) / s, t, x, variance_noise=NOISE[i], **step_kw).prev_sample
    return x.double()


def check(got, want):
    err = float((got - want).abs().max())
    assert err <= TOL, err


@pytest.mark.parametrize("eta", (1.0, 0.5))
def test_ddim_eta_equals_diffusers_ddim_with_the_same_noise(eta):
    scheduler = diffusers.DDIMScheduler(beta_schedule="linear", set_alpha_to_one=True, clip_sample=False)
    want = drive_vp(scheduler, eta=eta)
    sigmas, x0 = vp_grid(scheduler)
    noise = Injected()
    got = get_solver("ddim").fn(D, x0, sigmas, noise=noise, eta=eta)
    check(got, want)
    assert noise.asked == list(range(STEPS - 1))  # every step but the last (to sigma 0) draws


def test_dpmpp_2m_sde_equals_diffusers_sde_dpmsolverpp():
    """diffusers' 'sde-dpmsolver++' (order 2, midpoint) is SDE-DPM-Solver++(2M) with eta = 1."""
    scheduler = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="linear", solver_order=2, algorithm_type="sde-dpmsolver++", final_sigmas_type="zero"
    )
    want = drive_vp(scheduler)
    sigmas, x0 = vp_grid(scheduler)
    got = get_solver("dpmpp-2m-sde").fn(D, x0, sigmas, noise=Injected(), eta=1.0)
    check(got, want)


def test_euler_ancestral_equals_diffusers_with_the_same_noise(monkeypatch):
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as module

    calls = iter(range(STEPS))
    monkeypatch.setattr(module, "randn_tensor", lambda shape, **kw: NOISE[next(calls)].to(kw.get("dtype")))
    scheduler = diffusers.EulerAncestralDiscreteScheduler(beta_schedule="linear")
    scheduler.set_timesteps(STEPS)
    sig = scheduler.sigmas.double()
    x = Z * sig[0]
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step((x - D(x, sig[i])) / sig[i], t, x).prev_sample.double()
    got = get_solver("euler-ancestral").fn(D, Z * sig[0], sig, noise=Injected(), eta=1.0)
    check(got, x)


def unipc_peer(order: int, variant: str, prediction: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """diffusers' UniPC ending at sigma_min (its bh1 is NaN on a final step to sigma = 0): (x_final, sigmas, x0),
    all in EDM space."""
    scheduler = diffusers.UniPCMultistepScheduler(
        beta_schedule="linear",
        solver_order=order,
        solver_type=variant,
        predict_x0=prediction == "data",
        final_sigmas_type="sigma_min",
    )
    scheduler.set_timesteps(STEPS)
    # diffusers derives every UniPC coefficient (alpha_t, sigma_t, lambda, h, R, b, and rhos from a LAPACK solve)
    # from this float32 table, and the float32 solve's rounding depends on the CPU's kernel: order 3 with noise
    # prediction differs from float64 by 7.7e-6 with MKL's AVX-512 kernel and 4.6e-5 with SSE4.2
    # (MKL_ENABLE_INSTRUCTIONS=SSE4_2). The same table values in float64 make its coefficients float64, so what is
    # compared is the algorithm, not the peer's float32 rounding (the grid itself keeps the float32-rounded values).
    scheduler.sigmas = scheduler.sigmas.double()
    abar = scheduler.alphas_cumprod.double()
    x = Z.clone()
    for t in scheduler.timesteps:
        a, s = abar[t].sqrt(), ((1 - abar[t]) / abar[t]).sqrt()
        x_edm = x / a
        x = scheduler.step((x_edm - D(x_edm, s)) / s, t, x).prev_sample
    sig = scheduler.sigmas
    assert sig[-1] > 0
    return x.double() * (1 + sig[-1] ** 2).sqrt(), sig, Z * (1 + sig[0] ** 2).sqrt()


@pytest.mark.parametrize("order", (1, 2, 3))
@pytest.mark.parametrize("variant", ("bh1", "bh2"))
@pytest.mark.parametrize("prediction", ("data", "noise"))
def test_unipc_variants_and_predictions_equal_diffusers(order, variant, prediction):
    want, sigmas, x0 = unipc_peer(order, variant, prediction)
    got = get_solver("unipc").fn(D, x0, sigmas, noise=None, order=order, variant=variant, prediction=prediction)
    # With float64 coefficients (unipc_peer) the one float32 left is the driver's s = sqrt((1 - abar) / abar) from
    # float32 alphas_cumprod, which differs from the grid's float32-rounded sigma by <= 2^-24 = 6e-8 relative: each
    # of the 10 evaluations of D (|dD/dln sigma| <~ |x| <~ 2) is off by <= 1.2e-7, and 10 steps of a contracting
    # ODE add at most 10 of them: 1.2e-6. Measured 1.1e-7 (AVX-512 and SSE4.2 kernels alike).
    err = float((got - want).abs().max())
    assert err <= 1.2e-6, err


@pytest.mark.parametrize("order", (2, 3))
@pytest.mark.parametrize("prediction", ("data", "noise"))
def test_unipc_bh1_and_bh2_differ_here(order, prediction):
    """At these settings the two variants differ by far more than the tolerance (so swapping them is caught)."""
    a, sigmas, _ = unipc_peer(order, "bh1", prediction)
    b, _, _ = unipc_peer(order, "bh2", prediction)
    assert float((a - b).abs().max()) > 20 * TOL
