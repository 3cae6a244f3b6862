"""diffbench's solvers against diffusers' schedulers (a peer, as a test dependency) on the analytic mixture.

The peer runs its own loop on its own discrete-timestep grid; diffbench runs the same grid in EDM space with
the exact denoiser. The final samples must agree to float32 rounding (diffusers keeps its sigmas in float32).
"""

from __future__ import annotations

import pytest
import torch

import diffbench
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.solvers import get_solver

diffusers = pytest.importorskip("diffusers", reason="diffusers is the peer these tests compare against")
pytestmark = pytest.mark.filterwarnings("ignore")

MODEL = diffbench.load("gmm")
Z = NoiseSource(range(3)).latents(MODEL.sample_shape).double()
STEPS = 10


def D(x, sigma):
    return MODEL(x, torch.full((x.shape[0],), float(sigma), dtype=torch.float64))


def peer_vp(scheduler):
    """A VP-space scheduler (x_t = alpha x0 + sigma_vp eps, integer timesteps) driven by the exact epsilon."""
    scheduler.set_timesteps(STEPS)
    abar = scheduler.alphas_cumprod.double()
    x = Z.clone()
    for t in scheduler.timesteps:
        a, s = abar[t].sqrt(), ((1 - abar[t]) / abar[t]).sqrt()
        x_edm = x / a  # EDM space: x = x_t / sqrt(abar)
        x = scheduler.step((x_edm - D(x_edm, s)) / s, t, x).prev_sample
    sig = ((1 - abar[scheduler.timesteps]) / abar[scheduler.timesteps]).sqrt()
    x0 = Z * (1 + sig[0] ** 2).sqrt()
    return x, torch.cat([sig, sig.new_zeros(1)]), x0


def peer_sigma(scheduler):
    """A sigma-space scheduler (k-diffusion style: sample = x0 + sigma eps) driven by the exact epsilon."""
    scheduler.set_timesteps(STEPS)
    sig = scheduler.sigmas.double()
    x = Z * sig[0]
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step((x - D(x, sig[i])) / sig[i], t, x).prev_sample
    return x, sig, Z * sig[0]


def peer_sigma_before_zero(scheduler):
    """peer_sigma up to the last positive sigma: diffusers' LMS integrates its polynomial over [sigma_last, 0] on
    the step to 0, where diffbench takes x = D(x; sigma_last) (issue 10 §2); every step before it is compared."""
    scheduler.set_timesteps(STEPS)
    sig = scheduler.sigmas.double()
    x = Z * sig[0]
    for i, t in enumerate(scheduler.timesteps[:-1]):
        x = scheduler.step((x - D(x, sig[i])) / sig[i], t, x).prev_sample
    return x, sig[:-1], Z * sig[0]


CASES = [
    (
        "dpmpp-2m",
        {},
        "DPMSolverMultistepScheduler",
        {"solver_order": 2, "algorithm_type": "dpmsolver++", "final_sigmas_type": "zero"},
        peer_vp,
    ),
    (
        "unipc",
        {"order": 3},
        "UniPCMultistepScheduler",
        {"solver_order": 3, "solver_type": "bh2", "predict_x0": True, "final_sigmas_type": "zero"},
        peer_vp,
    ),
    (
        "unipc",
        {"order": 2},
        "UniPCMultistepScheduler",
        {"solver_order": 2, "solver_type": "bh2", "predict_x0": True, "final_sigmas_type": "zero"},
        peer_vp,
    ),
    ("ddim", {}, "DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}, peer_vp),
    ("lms", {"order": 4, "lower_order_final": "never"}, "LMSDiscreteScheduler", {}, peer_sigma_before_zero),
    ("euler", {}, "EulerDiscreteScheduler", {}, peer_sigma),
]


@pytest.mark.parametrize("solver,options,peer,config,drive", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_agrees_with_diffusers(solver, options, peer, config, drive):
    scheduler = getattr(diffusers, peer)(beta_schedule="linear", **config)
    want, sigmas, x0 = drive(scheduler)
    got = get_solver(solver).fn(D, x0, sigmas, noise=None, **options)
    assert torch.allclose(got, want.double(), atol=2e-5, rtol=0), float((got - want).abs().max())


@pytest.mark.parametrize(
    "solver,algorithm,final",
    [
        ("dpmpp-3m", "dpmsolver++", "zero"),
        ("dpmpp-3m", "dpmsolver++", "sigma_min"),
        ("dpm-solver-3m", "dpmsolver", "sigma_min"),
    ],
)
def test_published_3m_is_diffusers_and_taylor_differs(solver, algorithm, final):
    """The published 3M (phi_3 weight on D2, DPM-Solver's warm-up) is diffusers' solver_order=3 on the same grid,
    in data (dpmsolver++) and noise (dpmsolver) prediction; variant taylor (2 phi_3) is a different method."""
    scheduler = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="linear", solver_order=3, algorithm_type=algorithm, final_sigmas_type=final
    )
    want, sigmas, x0 = peer_vp(scheduler)
    if final == "sigma_min":  # diffusers ends at its smallest training sigma, in VP space
        abar0 = scheduler.alphas_cumprod[0].double()
        s_end = ((1 - abar0) / abar0).sqrt()
        sigmas, want = torch.cat([sigmas[:-1], s_end.reshape(1)]), want.double() * (1 + s_end**2).sqrt()
    info = get_solver(solver)
    published = info.fn(D, x0, sigmas, noise=None)
    assert torch.allclose(published, want.double(), atol=2e-5, rtol=0), float((published - want).abs().max())
    taylor = info.fn(D, x0, sigmas, noise=None, variant="taylor")
    assert float((taylor - want).abs().max()) > 1e-3
