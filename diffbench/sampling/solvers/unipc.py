"""UniPC: the unified predictor UniP-p with the corrector UniC (Zhao et al. 2023, Alg. 2-3), bh1/bh2 variants.

The corrector reuses the evaluation at the predicted point, which the next step also takes as its history,
so UniC costs no extra NFE; it is skipped on the last step. Written in EDM space (alpha = 1), data
prediction (x0) or noise prediction (eps) as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffbench.denoiser import BoundDenoiser
from diffbench.errors import UnknownNameError
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.solvers import Callback, StepInfo, order_at, push_history, solver
from diffbench.sampling.solvers.exponential import afs_nfe, check_lower_order_final, check_order, first_denoised
from diffbench.sampling.vocabulary import PREDICTIONS

VARIANTS = ("bh1", "bh2")


def unipc_coefficients(rks: list[float], hh: float, variant: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """R (order x order), b and B(h) of UniPC (Zhao et al. 2023, Eq. 9 and Alg. 2); B(h) = h (bh1), e^h - 1 (bh2)."""
    p = len(rks)
    h_phi_k = math.expm1(hh) / hh - 1
    fact = 1
    B_h = hh if variant == "bh1" else math.expm1(hh)
    R, b = [], []
    for k in range(1, p + 1):
        R.append([r ** (k - 1) for r in rks])
        b.append(h_phi_k * fact / B_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return torch.tensor(R, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), B_h


@solver(
    "unipc",
    order=3,
    stochastic=False,
    paper="Zhao et al. 2023, UniPC (NeurIPS), Alg. 2-3: UniP-p + UniC (order p + 1 with the corrector)",
    orders=(1, 2, 3),
    corrector_order=1,
    options=("order", "variant", "prediction", "lower_order_final", "analytic_first_step"),
    extra_nfe=afs_nfe,
    last_step=(
        "the step to sigma = 0 takes no new evaluation (1 NFE, spent by UniC's at the predicted point): x = D there "
        "with prediction=data; x - sigma eps with prediction=noise (UniP-1 as sigma' -> 0)"
    ),
)
def unipc(
    denoiser: BoundDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource | None = None,
    order: int = 3,
    variant: str = "bh2",
    prediction: str = "data",
    lower_order_final: str | int = 15,
    analytic_first_step: bool = False,
    history: Sequence[tuple[float, torch.Tensor, torch.Tensor]] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """UniPC multistep: UniP-p predictor, UniC corrector from the next evaluation (Zhao et al. 2023)."""
    order = check_order("unipc", order, (1, 2, 3))
    if variant not in VARIANTS:
        raise UnknownNameError("unipc variant", variant, VARIANTS)
    if prediction not in PREDICTIONS:
        raise UnknownNameError("unipc prediction", prediction, PREDICTIONS)
    lof = check_lower_order_final(lower_order_final)
    data = prediction == "data"

    def model(x: torch.Tensor, s: float, D: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        D = denoiser(x, s) if D is None else D
        return (D if data else (x - D) / s), D

    n = len(sigmas) - 1
    s0 = float(sigmas[0])
    m, denoised = model(x, s0, first_denoised(denoiser, x, s0, analytic_first_step))
    # (sigma, model output) before the current point, oldest first; `history` holds (sigma, x, D) triples
    hist = [(s_h, D_h if data else (x_h - D_h) / s_h) for s_h, x_h, D_h in history or []]
    n_ext = len(hist)
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if s_next == 0:  # h = inf: first order, x = D
            x = m if data else x - s * m
            if callback is not None:
                callback(StepInfo(i, n, s, s_next, x, denoised))
            break
        if s_next == s:  # zero-length step (round_sigma merged two sigmas): x stays, the evaluation is spent
            if i < n - 1:  # the next step starts here again: its model output replaces this one
                m, denoised = model(x, s_next)
            if callback is not None:
                callback(StepInfo(i, n, s, s_next, x, denoised))
            continue
        p = min(order_at(i, n, order, lof, history=n_ext), len(hist) + 1)
        h = math.log(s / s_next)
        rks, d1s = [], []
        for k in range(1, p):
            s_k, m_k = hist[-k]
            rk = math.log(s / s_k) / h  # (lambda_k - lambda_i) / h
            rks.append(rk)
            d1s.append((m_k - m) / rk)
        rks.append(1.0)
        hh = -h if data else h
        R, b, B_h = unipc_coefficients(rks, hh, variant)
        scale = 1.0 if data else s_next  # alpha_t = 1 (data) or sigma_t (noise) in EDM space
        # the first-order (DDIM / DPM-Solver-1) part, then UniP's higher-order terms (Zhao et al. 2023, Alg. 2)
        x_first = (s_next / s) * x - math.expm1(hh) * m if data else x - s_next * math.expm1(hh) * m
        x_pred = x_first
        if p >= 2:
            rhos_p = [0.5] if p == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
            x_pred = x_first - scale * B_h * sum(r * d for r, d in zip(rhos_p, d1s))
        hist = push_history(hist, s, m, order - 1)
        if i == n - 1:  # no corrector on the last step: its evaluation would not be used
            x = x_pred
        else:
            m_next, denoised = model(x_pred, s_next)
            rhos_c = [0.5] if p == 1 else torch.linalg.solve(R, b).tolist()
            corr = sum(r * d for r, d in zip(rhos_c[:-1], d1s)) + rhos_c[-1] * (m_next - m)
            x = x_first - scale * B_h * corr  # UniC (Zhao et al. 2023, Alg. 3)
            m = m_next
        if callback is not None:
            callback(StepInfo(i, n, s, s_next, x, denoised))
    return x
