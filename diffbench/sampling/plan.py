"""Budget planning: an exact NFE budget -> step count -> the sigma grid the solver runs on (REFERENCE §1, §4)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from diffbench.errors import BudgetError, ConfigError, UnknownNameError
from diffbench.sampling.schedules import file_grid, get_schedule
from diffbench.sampling.solvers import ENDPOINTS, SolverInfo, get_solver

NFE_POLICIES = ("exact", "nearest", "floor")


@dataclass(frozen=True)
class Plan:
    """What a run will do: the grid actually used (after round_sigma, with the final 0 if any) and its NFE."""

    solver: str
    schedule: str
    steps: int
    nfe: int
    sigmas: torch.Tensor = field(repr=False)
    endpoint: str = "edm"
    denoise_to_zero: bool = False
    sigma_min: float = 0.0
    sigma_max: float = 0.0
    requested_nfe: int | None = None

    @property
    def sigma_first(self) -> float:
        """The grid's first sigma: where sampling starts (x_0 = latents * sigma_first)."""
        return float(self.sigmas[0])

    @property
    def sigma_last_positive(self) -> float:
        """The grid's last nonzero sigma: the last level the network is evaluated at on the main grid.

        With a one-step 'edm' plan the grid is [sigma_max, 0], so this is sigma_max, not sigma_min.
        """
        return float(self.sigmas[self.sigmas > 0][-1])

    @property
    def sigma_end(self) -> float:
        """Where the run ends: 0 under 'edm' or with denoise_to_zero, else the last sigma of the grid."""
        return float(self.sigmas[-1])

    @property
    def distinct_levels(self) -> int:
        """Distinct sigma levels in the grid (round_sigma of a discrete model can merge steps)."""
        return int(torch.unique(self.sigmas).numel())

    @property
    def merged_steps(self) -> int:
        """Steps of zero length after round_sigma: they still cost their evaluations."""
        return int((self.sigmas[1:] == self.sigmas[:-1]).sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "solver": self.solver,
            "schedule": self.schedule,
            "steps": self.steps,
            "nfe": self.nfe,
            "requested_nfe": self.requested_nfe,
            "endpoint": self.endpoint,
            "denoise_to_zero": self.denoise_to_zero,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "sigma_first": self.sigma_first,
            "sigma_last_positive": self.sigma_last_positive,
            "sigma_end": self.sigma_end,
            "distinct_sigma_levels": self.distinct_levels,
            "merged_steps": self.merged_steps,
            "sigmas": [float(s) for s in self.sigmas],
        }


def reachable(
    info: SolverInfo, nfe: int, *, endpoint: str, denoise_to_zero: bool, options: dict[str, Any] | None = None
) -> tuple[int | None, int | None]:
    """The nearest budgets below and above `nfe` that the solver can hit exactly."""
    kw = {"endpoint": endpoint, "denoise_to_zero": denoise_to_zero, "options": options}
    below = next((k for k in range(nfe - 1, 0, -1) if info.steps_for(k, **kw)), None)
    above = next((k for k in range(nfe + 1, 2 * nfe + 8) if info.steps_for(k, **kw)), None)
    return below, above


def resolve_steps(
    info: SolverInfo,
    *,
    nfe: int | None,
    steps: int | None,
    endpoint: str,
    denoise_to_zero: bool,
    policy: str,
    options: dict[str, Any] | None = None,
) -> int:
    """Step count for an exact budget (or the policy's fallback); refused budgets list the nearest reachable ones."""
    if (nfe is None) == (steps is None):
        raise ConfigError("give exactly one of nfe and steps")
    kw = {"endpoint": endpoint, "denoise_to_zero": denoise_to_zero, "options": options}
    if steps is not None:
        if steps < info.min_steps:
            raise ConfigError(f"{info.name} needs at least {info.min_steps} steps, got {steps}")
        return steps
    assert nfe is not None
    if nfe < 1:
        raise BudgetError(f"nfe must be >= 1, got {nfe}")
    if policy not in NFE_POLICIES:
        raise UnknownNameError("nfe policy", policy, NFE_POLICIES)
    found = info.steps_for(nfe, **kw)
    if found is not None:
        return found
    smallest = info.nfe(info.min_steps, **kw)
    if nfe < smallest:
        raise BudgetError(
            f"a budget of {nfe} NFE is too small for {info.name} with these options: its smallest budget is {smallest}"
        )
    below, above = reachable(info, nfe, **kw)
    if policy == "floor" and below is not None:
        chosen = below
    elif policy == "nearest" and (below is not None or above is not None):
        chosen = min((b for b in (below, above) if b is not None), key=lambda b: (abs(b - nfe), b))
    else:
        near = " or ".join(str(b) for b in (below, above) if b is not None)
        raise BudgetError(
            f"{info.name} cannot spend exactly {nfe} NFE with endpoint '{endpoint}' "
            f"({info.nfe_rule}); nearest reachable: {near}. "
            "Use --nfe-policy nearest|floor to accept one"
        )
    return info.steps_for(chosen, **kw)  # type: ignore[return-value]


# the largest sigma a grid may hold: far above any trained model's range (EDM 80, VE 100, DDPM ~157), and well
# inside float arithmetic (latents * sigma and sigma^2 stay finite in float32)
MAX_SIGMA = 1e6


def describe_range(lo: float, hi: float) -> str:
    """The admissible sigmas as an interval: open at 0 (sigma = 0 is no noise level) and at inf."""
    left = "(0" if lo <= 0 else f"[{lo:.6g}"
    right = "inf)" if math.isinf(hi) else f"{hi:.6g}]"
    return f"{left}, {right}"


def sigma_range(
    denoiser: Any, default: tuple[float, float], sigma_min: float | None, sigma_max: float | None
) -> tuple[float, float]:
    """Defaults clamped to the network's range; an explicit value outside it is an error (DESIGN.md)."""
    net_min, net_max = float(denoiser.sigma_min), float(denoiser.sigma_max)
    for label, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if value is not None and not (net_min <= value <= net_max and value > 0 and math.isfinite(value)):
            raise ConfigError(f"{label} {value} is outside the model's sigma range {describe_range(net_min, net_max)}")
        if value is not None and value > MAX_SIGMA:
            raise ConfigError(f"{label} {value:.6g} is above the largest sigma diffbench accepts ({MAX_SIGMA:g})")
    lo = sigma_min if sigma_min is not None else max(default[0], net_min)
    hi = sigma_max if sigma_max is not None else min(default[1], net_max)
    if not 0 < lo < hi:
        raise ConfigError(f"sigma range [{lo:.6g}, {hi:.6g}] is empty")
    return float(lo), float(hi)


def schedule_grid(sched: Any, n_points: int, lo: float, hi: float, options: dict[str, Any]) -> torch.Tensor:
    """The schedule's grid, refused with one line when its options make it overflow or degenerate."""
    for k in ("rho", "epsilon_s", "C_1", "C_2"):
        v = options.get(k)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ConfigError(f"{k} must be a finite number > 0, got {v}")
    what = f"the {sched.name} grid" + "".join(f" with {k} {v:g}" for k, v in options.items())
    try:
        grid = sched.fn(n_points, lo, hi, **options)
    except (OverflowError, ZeroDivisionError, ValueError) as exc:
        raise ConfigError(f"{what} overflows or is undefined ({type(exc).__name__}); choose a moderate value") from None
    grid = torch.as_tensor(grid, dtype=torch.float64).reshape(-1)
    if not (torch.isfinite(grid).all() and (grid > 0).all() and (grid[1:] < grid[:-1]).all()):
        raise ConfigError(
            f"{what} is degenerate (not {n_points} strictly descending finite sigmas in [{lo:.6g}, {hi:.6g}]); "
            "choose a moderate value"
        )
    return grid


def plan(
    denoiser: Any,
    *,
    solver: str,
    schedule: str,
    nfe: int | None = None,
    steps: int | None = None,
    endpoint: str = "edm",
    denoise_to_zero: bool = False,
    nfe_policy: str = "exact",
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    schedule_options: dict[str, Any] | None = None,
    solver_options: dict[str, Any] | None = None,
) -> Plan:
    """Plan a run: steps from the budget, the schedule's grid on the clamped range, round_sigma, the endpoint."""
    info = get_solver(solver)
    if endpoint not in ENDPOINTS:
        raise UnknownNameError("endpoint", endpoint, ENDPOINTS)
    if denoise_to_zero and endpoint != "sigma_min":
        raise ConfigError("denoise_to_zero applies only to endpoint 'sigma_min' (endpoint 'edm' already ends at 0)")
    n_steps = resolve_steps(
        info,
        nfe=nfe,
        steps=steps,
        endpoint=endpoint,
        denoise_to_zero=denoise_to_zero,
        policy=nfe_policy,
        options=solver_options,
    )
    n_points = n_steps if endpoint == "edm" else n_steps + 1
    options = dict(schedule_options or {})
    if schedule.startswith("file:"):
        if options:
            raise ConfigError(f"schedule options {sorted(options)} do not apply to a file grid")
        grid = file_grid(schedule[5:])
        lo, hi = sigma_range(denoiser, (float(grid[-1]), float(grid[0])), float(grid[-1]), float(grid[0]))
        if len(grid) != n_points:
            raise BudgetError(
                f"the grid in {schedule[5:]} has {len(grid)} sigmas; {info.name} at this budget "
                f"needs {n_points} (endpoint '{endpoint}')"
            )
    else:
        sched = get_schedule(schedule)
        unknown = set(options) - set(sched.options)
        if unknown:
            raise ConfigError(
                f"option(s) {', '.join(sorted(unknown))} do not apply to schedule '{schedule}' "
                f"(it takes: {', '.join(sched.options) or 'none'})"
            )
        lo, hi = sigma_range(denoiser, sched.default_range, sigma_min, sigma_max)
        grid = schedule_grid(sched, n_points, lo, hi, options)
    grid = torch.as_tensor(denoiser.round_sigma(grid.to(torch.float64)), dtype=torch.float64).reshape(-1)
    if endpoint == "edm" or denoise_to_zero:
        grid = torch.cat([grid, grid.new_zeros(1)])
    return Plan(
        solver=info.name,
        schedule=schedule,
        steps=n_steps,
        nfe=info.nfe(n_steps, endpoint=endpoint, denoise_to_zero=denoise_to_zero, options=solver_options),
        sigmas=grid,
        endpoint=endpoint,
        denoise_to_zero=denoise_to_zero,
        sigma_min=lo,
        sigma_max=hi,
        requested_nfe=nfe,
    )
