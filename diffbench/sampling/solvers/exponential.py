"""Exponential integrators in lambda = -log sigma: DPM-Solver-2/3 (noise prediction) and DPM-Solver++ (data).

In EDM space (x = y + sigma n, alpha = 1) a step of length h = log(sigma / sigma_next) solves the linear part
exactly: x_next = (sigma_next / sigma) x - (e^-h - 1) D (data form) or x_next = x + (sigma_next - sigma) eps
(noise form, eps = (x - D) / sigma). A step to sigma = 0 has h = inf and is taken at first order: x_next = D.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from diffbench.denoiser import BoundDenoiser
from diffbench.errors import ConfigError, NotApplicableError, UnknownNameError
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.solvers import VARIANT_VALUES, Callback, StepInfo, order_at, push_history, solver

LU_2022 = "Lu et al. 2022, DPM-Solver (NeurIPS), Alg. 1"
LU_2022B = "Lu et al. 2022b, DPM-Solver++ (arXiv 2211.01095)"
MULTISTEP_OPTIONS = ("lower_order_final", "analytic_first_step")


def afs_nfe(options: dict[str, Any]) -> int:
    """The analytic first step saves one evaluation (REFERENCE §4)."""
    return -1 if options.get("analytic_first_step") else 0


def first_denoised(denoiser: BoundDenoiser, x: torch.Tensor, sigma: float, analytic: bool) -> torch.Tensor:
    """D at the first point, or its analytic stand-in d = x / sqrt(1 + sigma^2), D = x - sigma d (AFS)."""
    if analytic:
        return x - sigma * x / math.sqrt(1 + sigma * sigma)
    return denoiser(x, sigma)


def check_lower_order_final(value: Any) -> str | int:
    if value in ("always", "never") or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return int(value)
    raise ConfigError(f"lower_order_final must be 'always', 'never' or a step count N > 0, got {value!r}")


def check_order(name: str, order: int, orders: Sequence[int]) -> int:
    if order not in orders:
        raise NotApplicableError(f"{name} supports order {', '.join(map(str, orders))}; got {order}")
    return int(order)


def _eps(denoiser: BoundDenoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    return (x - denoiser(x, sigma)) / sigma


def idle_step(denoiser: BoundDenoiser, x: torch.Tensor, sigma: float, evals: int) -> torch.Tensor:
    """A zero-length step (round_sigma merged sigma and sigma_next): x stays, the planned evaluations are spent."""
    for _ in range(evals):
        denoised = denoiser(x, sigma)
    return denoised


def check_variant(name: str, variant: str) -> str:
    if variant not in VARIANT_VALUES[name]:
        raise UnknownNameError(f"{name} variant", variant, VARIANT_VALUES[name])
    return variant


def variant_order(options: dict[str, Any]) -> int:
    """Convergence order of the 3rd-order multistep forms: 2 with the published phi_3 weight, 3 with 2 phi_3."""
    return 3 if options.get("variant") == "taylor" else 2


@solver(
    "dpm-solver-2",
    order=2,
    stochastic=False,
    paper=LU_2022 + " (DPM-Solver-2, r1 = 1/2)",
    evals_per_step=2,
    evals_final=1,
)
def dpm_solver_2(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Singlestep DPM-Solver-2, noise prediction: an intermediate point at the geometric mean sigma."""
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if s_next == s:
            denoised = idle_step(denoiser, x, s, 2)
            if callback is not None:
                callback(StepInfo(i, n, s, s_next, x, denoised))
            continue
        denoised = denoiser(x, s)
        eps = (x - denoised) / s
        if s_next == 0:
            x = denoised
        else:
            s_mid = math.sqrt(s * s_next)  # lambda + h/2
            u = x + (s_mid - s) * eps  # DPM-Solver-1 to the midpoint (Lu et al. 2022, Eq. 3.7)
            x = x + (s_next - s) * _eps(denoiser, u, s_mid)
        if callback is not None:
            callback(StepInfo(i, n, s, s_next, x, denoised))
    return x


@solver(
    "dpm-solver-3",
    order=3,
    stochastic=False,
    paper="Lu et al. 2022, DPM-Solver (NeurIPS), Alg. 2 (r1=1/3, r2=2/3)",
    evals_per_step=3,
    evals_final=1,
)
def dpm_solver_3(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Singlestep DPM-Solver-3, noise prediction (Lu et al. 2022, Alg. 2), in EDM space."""
    r1, r2 = 1 / 3, 2 / 3
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if s_next == s:
            denoised = idle_step(denoiser, x, s, 3)
            if callback is not None:
                callback(StepInfo(i, n, s, s_next, x, denoised))
            continue
        denoised = denoiser(x, s)
        eps = (x - denoised) / s
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s / s_next)
            s1, s2 = s * math.exp(-r1 * h), s * math.exp(-r2 * h)
            u1 = x - s1 * math.expm1(r1 * h) * eps
            d1 = _eps(denoiser, u1, s1) - eps
            u2 = x - s2 * math.expm1(r2 * h) * eps - s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * d1
            d2 = _eps(denoiser, u2, s2) - eps
            x = x - s_next * math.expm1(h) * eps - (s_next / r2) * (math.expm1(h) / h - 1) * d2
        if callback is not None:
            callback(StepInfo(i, n, s, s_next, x, denoised))
    return x


@solver(
    "dpmpp-2s",
    order=2,
    stochastic=False,
    paper=LU_2022B + ", Alg. 1 (singlestep, r = 1/2)",
    evals_per_step=2,
    evals_final=1,
)
def dpmpp_2s(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2S): data prediction at the midpoint in lambda (Lu et al. 2022b, Alg. 1 with r = 1/2)."""
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, s)
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s / s_next)
            s_mid = s * math.exp(-h / 2)
            u = (s_mid / s) * x - math.expm1(-h / 2) * denoised
            x = (s_next / s) * x - math.expm1(-h) * denoiser(u, s_mid)
        if callback is not None:
            callback(StepInfo(i, n, s, s_next, x, denoised))
    return x


def _multistep_update(
    x: torch.Tensor,
    s: float,
    s_next: float,
    m: torch.Tensor,
    hist: list[tuple[float, torch.Tensor]],
    p: int,
    *,
    data: bool,
    d2_weight: float,
) -> torch.Tensor:
    """One multistep DPM-Solver update of order p from the model output m at s and the history (newest last).

    data=True: DPM-Solver++ (m = D; Lu et al. 2022b, Alg. 2 and its 3rd-order form); data=False: multistep
    DPM-Solver with noise prediction (m = eps; Lu et al. 2022b, App. B). In EDM space (alpha = 1):
      data:  x' = (s'/s) x - phi1 m + phi2 D1 - w phi3 D2,   phi1 = e^-h - 1, phi2 = phi1/h + 1, phi3 = phi2/h - 1/2
      noise: x' = x - s' (phi1 m + phi2 D1 + w phi3 D2),     phi1 = e^h - 1,  phi2 = phi1/h - 1, phi3 = phi2/h - 1/2
    with D1, D2 the first and second divided differences of m in lambda (scaled by h and h^2). w = d2_weight:
    1 is the published form (DPM-Solver's code, diffusers, k-diffusion); the Taylor integral of the
    exponential integrator gives w = 2 (D2 ~ h^2 m''/2, int_0^h e^(h-u) u^2/2 du = h^2 phi3), the only
    choice that is third order (measured: tests/test_solver_orders.py).
    """
    h = math.log(s / s_next)
    if data:
        phi1 = math.expm1(-h)
        base = (s_next / s) * x - phi1 * m
    else:
        phi1 = math.expm1(h)
        base = x - s_next * phi1 * m
    if p == 1:
        return base
    s0, m0 = hist[-1]
    r0 = math.log(s0 / s) / h
    d1_0 = (m - m0) / r0
    if p == 2:  # D' = (1 + 1/2r) m_i - (1/2r) m_{i-1}: the 2M update (Lu et al. 2022b, Alg. 2; REFERENCE §7)
        return base - 0.5 * phi1 * d1_0 if data else base - s_next * 0.5 * phi1 * d1_0
    s1, m1 = hist[-2]
    r1 = math.log(s1 / s0) / h
    d1_1 = (m0 - m1) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi2 = phi1 / h + 1 if data else phi1 / h - 1
    phi3 = phi2 / h - 0.5
    if data:
        return base + phi2 * d1 - d2_weight * phi3 * d2
    return base - s_next * (phi2 * d1 + d2_weight * phi3 * d2)


D2_WEIGHT = {"published": 1.0, "taylor": 2.0}


def _dpm_multistep(
    denoiser, x, sigmas, *, order, lower_order_final, analytic_first_step, history, callback, data, d2_weight
):
    """The shared multistep loop; a zero-length step (merged sigmas) spends its evaluation and keeps x."""
    lof = check_lower_order_final(lower_order_final)

    def out(x, s, D):
        return D if data else (x - D) / s

    hist = [(s, out(xh, s, D)) for s, xh, D in history or []]
    n_ext = len(hist)
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        D = first_denoised(denoiser, x, s, analytic_first_step) if i == 0 else denoiser(x, s)
        m = out(x, s, D)
        if s_next == 0:
            x = D
        elif s_next != s:
            p = min(order_at(i, n, order, lof, history=n_ext), len(hist) + 1)
            x = _multistep_update(x, s, s_next, m, hist, p, data=data, d2_weight=d2_weight)
        if s_next != s:  # after a zero-length step the next one starts at s again and replaces this value
            hist = push_history(hist, s, m, order - 1)
        if callback is not None:
            callback(StepInfo(i, n, s, s_next, x, D))
    return x


@solver(
    "dpmpp-2m",
    order=2,
    stochastic=False,
    paper=LU_2022B + ", Alg. 2 (multistep)",
    min_steps=1,
    options=MULTISTEP_OPTIONS,
    extra_nfe=afs_nfe,
)
def dpmpp_2m(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    lower_order_final: str | int = 15,
    analytic_first_step: bool = False,
    history: Sequence[tuple[float, torch.Tensor, torch.Tensor]] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M): 2nd-order multistep, data prediction (Lu et al. 2022b, Alg. 2)."""
    return _dpm_multistep(
        denoiser,
        x,
        sigmas,
        order=2,
        lower_order_final=lower_order_final,
        analytic_first_step=analytic_first_step,
        history=history,
        callback=callback,
        data=True,
        d2_weight=D2_WEIGHT["published"],  # no second difference at order 2
    )


THREE_M_NOTE = (
    "variant published (default): phi_3 weight on D2, as DPM-Solver's code, diffusers "
    "(solver_order=3) and k-diffusion: order 2; variant taylor: 2 phi_3, order 3"
)


@solver(
    "dpmpp-3m",
    order=3,
    stochastic=False,
    paper=LU_2022B + ", multistep 3rd order (App. B; the multistep_dpm_solver_third_update of its code)",
    options=(*MULTISTEP_OPTIONS, "variant"),
    extra_nfe=afs_nfe,
    convergence=variant_order,
    order_note=THREE_M_NOTE,
)
def dpmpp_3m(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    variant: str = "published",
    lower_order_final: str | int = 15,
    analytic_first_step: bool = False,
    history: Sequence[tuple[float, torch.Tensor, torch.Tensor]] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(3M): 3rd-order multistep, data prediction (Lu et al. 2022b); warm-up with orders 1, 2."""
    return _dpm_multistep(
        denoiser,
        x,
        sigmas,
        order=3,
        lower_order_final=lower_order_final,
        analytic_first_step=analytic_first_step,
        history=history,
        callback=callback,
        data=True,
        d2_weight=D2_WEIGHT[check_variant("dpmpp-3m", variant)],
    )


@solver(
    "dpm-solver-3m",
    order=3,
    stochastic=False,
    paper="Lu et al. 2022b (arXiv 2211.01095), App. B: multistep DPM-Solver with noise prediction, 3rd order",
    options=(*MULTISTEP_OPTIONS, "variant"),
    extra_nfe=afs_nfe,
    convergence=variant_order,
    order_note=THREE_M_NOTE,
)
def dpm_solver_3m(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    variant: str = "published",
    lower_order_final: str | int = 15,
    analytic_first_step: bool = False,
    history: Sequence[tuple[float, torch.Tensor, torch.Tensor]] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Multistep DPM-Solver-3 on eps = (x - D)/sigma (diffusers' algorithm_type='dpmsolver', solver_order=3)."""
    return _dpm_multistep(
        denoiser,
        x,
        sigmas,
        order=3,
        lower_order_final=lower_order_final,
        analytic_first_step=analytic_first_step,
        history=history,
        callback=callback,
        data=False,
        d2_weight=D2_WEIGHT[check_variant("dpm-solver-3m", variant)],
    )


@solver(
    "dpmpp-2m-sde",
    order=2,
    stochastic=True,
    paper=LU_2022B + ", SDE-DPM-Solver++(2M) (Sec. 5), midpoint form; eta = 0 gives DPM-Solver++(2M)",
    options=("eta", "S_noise", "lower_order_final"),
)
def dpmpp_2m_sde(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    eta: float = 1.0,
    S_noise: float = 1.0,
    lower_order_final: str | int = 15,
    history: Sequence[tuple[float, torch.Tensor, torch.Tensor]] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) with noise strength eta (Lu et al. 2022b): x' = (s'/s)e^-eta h x + ... + noise."""
    if eta < 0:
        raise ConfigError(f"eta must be >= 0, got {eta}")
    lof = check_lower_order_final(lower_order_final)
    prev = (history[-1][0], history[-1][2]) if history else None  # (sigma, D) of the last point before this run
    n_ext = int(prev is not None)
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        D = denoiser(x, s)
        if s_next == 0:
            x = D
        elif s_next != s:  # a zero-length step (merged sigmas) keeps x
            h = math.log(s / s_next)
            eh = eta * h
            coef = -math.expm1(-h - eh)  # 1 - e^{-(1 + eta) h}
            x = (s_next / s) * math.exp(-eh) * x + coef * D
            if order_at(i, n, 2, lof, history=n_ext) == 2 and prev is not None:
                s0, D0 = prev
                r = math.log(s0 / s) / h
                x = x + 0.5 * coef * (D - D0) / r
            if eh > 0:
                if noise is None:
                    raise ConfigError("dpmpp-2m-sde with eta > 0 needs a noise source")
                x = x + s_next * math.sqrt(-math.expm1(-2 * eh)) * S_noise * noise.increment(i, s, s_next, x)
        if s_next != s:  # after a zero-length step the next one starts at s again and replaces this value
            prev = (s, D)
        if callback is not None:
            callback(StepInfo(i, n, s, s_next, x, D))
    return x
