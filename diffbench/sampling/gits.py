"""GITS: a sampling schedule cut from a teacher trajectory by dynamic programming (Chen et al. 2024, ICML,
"On the Trajectory Regularity of ODE-based Diffusion Sampling", Sec. 4).

Pure functions over tensors: the local-error cost matrix of one Euler step between every pair of fine-grid
points, and the cheapest K-step path through it. The teacher trajectory itself is run by
diffbench.sweep.tune (it needs the sampler); nothing here calls a network.
"""

from __future__ import annotations

import numpy as np
import torch

from diffbench.errors import ConfigError

GITS_COEFF = 1.15  # the DP coefficient of Chen et al. 2024 (their default, gits-main README)
FINE_POINTS = 61  # teacher grid: 61 points (60 steps) of EDM's rho = 7 grid (Chen et al. 2024, Sec. 5)
COSTS = ("dev", "l2")


def deviation(y: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Per-sample distance [B] of points y [B, ...] from the straight line through start and end [B, ...]:
    the norm of (end - y) minus its projection on the unit vector (end - start)/|end - start|
    (the trajectory's "deviation", Chen et al. 2024, Sec. 3.1)."""
    b = y.shape[0]
    ac = (end - y).reshape(b, -1).to(torch.float64)
    bc = (end - start).reshape(b, -1).to(torch.float64)
    u = bc / bc.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    perp = ac - (ac * u).sum(dim=1, keepdim=True) * u
    return perp.norm(dim=1)


def cost_matrix(xs: torch.Tensor, ds: torch.Tensor, sigmas: torch.Tensor, *, cost: str = "dev") -> np.ndarray:
    """Local error of one Euler step between every pair of fine-grid points, averaged over the batch.

    xs [N, B, ...]: the teacher's states at the N fine-grid sigmas (descending, all > 0); ds [N-1, B, ...]: the
    teacher's direction dx/dsigma = (x_i - D(x_i; sigma_i)) / sigma_i at each point but the last.
    For i < j the step is x̂_j = x_i + (sigma_j - sigma_i) d_i (EDM Eq. 3 probability-flow ODE, one Euler step);
    cost 'l2': E|x̂_j - x_j| (per-sample L2 norm); cost 'dev': E[dev(x̂_j) - dev(x_j)], dev the distance from
    the line through the teacher's start and end (Chen et al. 2024, Sec. 4). Returns C [N, N] float64 with
    C[i, j] for i < j and +inf elsewhere. Raises ConfigError for an unknown cost or mismatched shapes.
    """
    if cost not in COSTS:
        raise ConfigError(f"unknown GITS cost '{cost}' (choose from {', '.join(COSTS)})")
    n = xs.shape[0]
    if ds.shape[0] != n - 1 or sigmas.numel() != n:
        raise ConfigError(f"teacher trajectory of {n} states needs {n - 1} directions and {n} sigmas")
    sig = sigmas.to(torch.float64).cpu()
    x = xs.to(torch.float64).cpu()
    d = ds.to(torch.float64).cpu()
    start, end = x[0], x[-1]
    dev_teacher = torch.stack([deviation(x[j], start, end) for j in range(n)])  # [N, B]
    out = np.full((n, n), np.inf)
    for i in range(n - 1):
        for j in range(i + 1, n):
            step = x[i] + (sig[j] - sig[i]) * d[i]
            if cost == "l2":
                v = (step - x[j]).reshape(step.shape[0], -1).norm(dim=1).mean()
            else:
                v = (deviation(step, start, end) - dev_teacher[j]).mean()
            out[i, j] = float(v)
    return out


def gits_path(cost: np.ndarray, steps: int, *, coeff: float = GITS_COEFF) -> tuple[list[int], float]:
    """The cheapest path 0 = p_0 < p_1 < ... < p_K = N-1 of K = `steps` steps through a cost matrix [N, N]:
    minimises sum_k coeff^k C[p_k, p_{k+1}] (Chen et al. 2024, Sec. 4: the DP, later steps weighted by the
    coefficient). Returns (indices, total weighted cost). Raises ConfigError when K is not in [1, N-1].

    V[i, 1] = C[i, N-1]; V[i, k] = min_{i<j<N-1} C[i, j] + coeff V[j, k-1]; the path follows the argmins.
    """
    c = np.asarray(cost, dtype=np.float64)
    n = c.shape[0]
    if c.ndim != 2 or c.shape[1] != n:
        raise ConfigError(f"the cost matrix must be square, got shape {c.shape}")
    if not 1 <= steps <= n - 1:
        raise ConfigError(f"a path of {steps} steps does not fit a fine grid of {n} points (1 to {n - 1} steps)")
    if not (np.isfinite(coeff) and coeff > 0):
        raise ConfigError(f"the GITS coefficient must be a finite number > 0, got {coeff}")
    value = np.full((n, steps + 1), np.inf)
    choice = np.full((n, steps + 1), -1, dtype=np.int64)
    value[: n - 1, 1] = c[: n - 1, n - 1]
    choice[: n - 1, 1] = n - 1
    for k in range(2, steps + 1):
        for i in range(n - 1):
            js = np.arange(i + 1, n - 1)
            if js.size == 0:
                continue
            cand = c[i, js] + coeff * value[js, k - 1]
            best = int(np.argmin(cand))
            value[i, k], choice[i, k] = cand[best], js[best]
    if not np.isfinite(value[0, steps]):
        raise ConfigError(f"no finite path of {steps} steps through the cost matrix")
    path, i = [0], 0
    for k in range(steps, 0, -1):
        i = int(choice[i, k])
        path.append(i)
    return path, float(value[0, steps])
