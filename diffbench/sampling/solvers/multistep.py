"""Linear multistep solvers on d = (x - D)/sigma: iPNDM, DEIS-tAB and LMS; 1 evaluation per step.

The step to sigma = 0 is x = D(x; sigma_last), as the exponential integrators take it: the polynomial
extrapolation of d over [sigma_last, 0] is not convergent (its error stalls near 1e-5 on the mixture,
tests/test_solver_orders.py), while D at sigma_last is exact up to the state's error. k-diffusion's
sample_lms integrates the polynomial down to 0 instead (its error floor; not reproduced here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from diffbench.denoiser import BoundDenoiser
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.schedules import vp_time
from diffbench.sampling.solvers import Callback, StepInfo, order_at, push_history, solver
from diffbench.sampling.solvers.exponential import afs_nfe, check_lower_order_final, check_order, first_denoised

MULTI_OPTIONS = ("order", "lower_order_final", "analytic_first_step")

# iPNDM warm-start coefficients (Zhang & Chen 2023; REFERENCE §4): Adams-Bashforth of orders 1-4
IPNDM_COEFFS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(12)


def lagrange_integrals(
    nodes: Sequence[float], a: float, b: float, var: Callable[[np.ndarray], np.ndarray] = lambda s: s
) -> list[float]:
    """C_j = integral over sigma in [a, b] of l_j(var(sigma)), l_j the Lagrange basis on `nodes` (in var).

    var = identity gives LMS (polynomial in sigma); var = VP t(sigma) gives DEIS-tAB (polynomial in t).
    Gauss-Legendre with 12 points in sigma (exact for polynomials in sigma up to degree 23).
    """
    sig = 0.5 * (b - a) * _GL_NODES + 0.5 * (a + b)
    w = 0.5 * (b - a) * _GL_WEIGHTS
    u = var(sig)
    out = []
    for j, uj in enumerate(nodes):
        basis = np.ones_like(u)
        for k, uk in enumerate(nodes):
            if k != j:
                basis *= (u - uk) / (uj - uk)
        out.append(float((w * basis).sum()))
    return out


def _multistep(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    order: int,
    lower_order_final: Any,
    analytic_first_step: bool,
    history: Sequence[tuple[float, torch.Tensor, torch.Tensor]] | None,
    callback: Callback | None,
    weights: Callable[[list[float], float, float], Sequence[float]],
) -> torch.Tensor:
    """x_{i+1} = x_i + sum_j C_j d_{i-j}: the shared loop; `weights(nodes, s, s_next)` gives the C_j."""
    lof = check_lower_order_final(lower_order_final)
    hist = [(s, (xh - D) / s) for s, xh, D in history] if history else []
    n_ext = len(hist)
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = first_denoised(denoiser, x, s, analytic_first_step) if i == 0 else denoiser(x, s)
        d = (x - denoised) / s
        if s_next == 0:
            x = denoised  # the last step to 0: x = D(x; sigma_last) (module docstring)
        elif s_next != s:  # a zero-length step (round_sigma merged two sigmas) keeps x
            p = min(order_at(i, n, order, lof, history=n_ext), len(hist) + 1)
            past = [(s, d), *reversed(hist)][:p]  # newest first
            coeffs = weights([q[0] for q in past], s, s_next)
            x = x + sum(c * dj for c, (_, dj) in zip(coeffs, past))
        if s_next != s:  # after a zero-length step the next one starts at s again and replaces this value
            hist = push_history(hist, s, d, order - 1)
        if callback is not None:
            callback(StepInfo(i, n, s, s_next, x, denoised))
    return x


@solver(
    "ipndm",
    order=4,
    stochastic=False,
    paper="Zhang & Chen 2023, DEIS (ICLR), improved PNDM: Adams-Bashforth on d with warm start",
    orders=(1, 2, 3, 4),
    options=MULTI_OPTIONS,
    extra_nfe=afs_nfe,
    convergence=lambda options: min(int(options["order"]), 2),
    order_note="fixed Adams-Bashforth coefficients: order min(order, 2) on non-uniform grids such as EDM's "
    "rho = 7; the full `order` (up to 4) only on grids uniform in sigma",
)
def ipndm(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    order: int = 4,
    lower_order_final: str | int = "never",
    analytic_first_step: bool = False,
    history: Sequence[tuple[float, torch.Tensor, torch.Tensor]] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """iPNDM: x' = x + (sigma' - sigma) sum_j c_j d_{i-j}, fixed AB coefficients (order holds on uniform grids)."""
    order = check_order("ipndm", order, (1, 2, 3, 4))
    return _multistep(
        denoiser,
        x,
        sigmas,
        order=order,
        lower_order_final=lower_order_final,
        analytic_first_step=analytic_first_step,
        history=history,
        callback=callback,
        weights=lambda nodes, s, s_next: [(s_next - s) * c for c in IPNDM_COEFFS[len(nodes)]],
    )


@solver(
    "deis",
    order=3,
    stochastic=False,
    paper="Zhang & Chen 2023, DEIS (ICLR), tAB: polynomial in VP t of eps, integrated exactly (Eq. 15)",
    orders=(1, 2, 3),
    options=MULTI_OPTIONS,
    extra_nfe=afs_nfe,
    conventions={
        "deis_variant": "tAB: Lagrange polynomial of eps = (x - D)/sigma in VP time t(sigma) with beta_d 19.9, "
        "beta_min 0.1, integrated over sigma (Gauss-Legendre, 12 points); diffusers' DEISMultistepScheduler "
        "fits it in log(rho) of its own alphas, diff-sampler in t of its own beta"
    },
)
def deis(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    order: int = 3,
    lower_order_final: str | int = "never",
    analytic_first_step: bool = False,
    history: Sequence[tuple[float, torch.Tensor, torch.Tensor]] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DEIS-tAB: d = eps extrapolated by a polynomial in the VP time t, integrated over sigma."""
    order = check_order("deis", order, (1, 2, 3))
    return _multistep(
        denoiser,
        x,
        sigmas,
        order=order,
        lower_order_final=lower_order_final,
        analytic_first_step=analytic_first_step,
        history=history,
        callback=callback,
        weights=lambda nodes, s, s_next: lagrange_integrals(vp_time(np.asarray(nodes)).tolist(), s, s_next, vp_time),
    )


@solver(
    "lms",
    order=4,
    stochastic=False,
    paper="Linear multistep (Adams-Bashforth) in sigma, Lagrange basis integrated numerically (as k-diffusion)",
    orders=(1, 2, 3, 4),
    options=MULTI_OPTIONS,
    extra_nfe=afs_nfe,
)
def lms(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    order: int = 4,
    lower_order_final: str | int = "never",
    analytic_first_step: bool = False,
    history: Sequence[tuple[float, torch.Tensor, torch.Tensor]] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """LMS: variable-step Adams-Bashforth on dx/dsigma = d (integrated Lagrange basis in sigma)."""
    order = check_order("lms", order, (1, 2, 3, 4))
    return _multistep(
        denoiser,
        x,
        sigmas,
        order=order,
        lower_order_final=lower_order_final,
        analytic_first_step=analytic_first_step,
        history=history,
        callback=callback,
        weights=lambda nodes, s, s_next: lagrange_integrals(nodes, s, s_next),
    )
