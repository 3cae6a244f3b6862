"""Budget planning: an exact NFE budget -> step count -> the sigma grid the solver runs on (REFERENCE §1, §4)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from diffbench.denoiser import Denoiser
from diffbench.errors import BudgetError, ConfigError, NotApplicableError, UnknownNameError
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.schedules import file_grid, get_schedule
from diffbench.sampling.solvers import SolverInfo, get_solver
from diffbench.sampling.vocabulary import ENDPOINTS, NFE_POLICIES


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
    costs: tuple[int, ...] = field(default=(), repr=False)  # network evaluations per sample of each grid interval

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
    kw: dict[str, Any] = {"endpoint": endpoint, "denoise_to_zero": denoise_to_zero, "options": options}
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
    kw: dict[str, Any] = {"endpoint": endpoint, "denoise_to_zero": denoise_to_zero, "options": options}
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
    denoiser: Denoiser, default: tuple[float, float], sigma_min: float | None, sigma_max: float | None
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


# network evaluations per sample of one evaluation D(x; sigma), at sigma (1 for a single network)
Cost = Callable[[float], int]


class _Rehearsal:
    """A stand-in network for one dry run of a solver: D = 0, the real round_sigma, each evaluation's sigma kept."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser = denoiser
        self.sigmas: list[float] = []

    def round_sigma(self, sigma: Any) -> Any:
        return self.denoiser.round_sigma(sigma)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        self.sigmas.append(float(torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)[0]))
        return torch.zeros_like(x)


def step_costs(
    denoiser: Denoiser, info: SolverInfo, sigmas: torch.Tensor, options: dict[str, Any] | None, cost: Cost | None
) -> tuple[int, ...]:
    """Network evaluations per sample of each step of a grid: the solver run once on a one-number state with a
    stand-in network, each evaluation at sigma charged cost(sigma) (1 when cost is None). Exact for every
    solver, whatever sigmas its evaluations fall at (churn's raised sigma, midpoints, restarts).
    Raises ConfigError for a cost below 1 (every evaluation runs a network at least once)."""
    stand_in = _Rehearsal(denoiser)
    ends: list[int] = []
    x = torch.zeros((1, 1), dtype=torch.float64)
    info.fn(
        stand_in,
        x,
        sigmas,
        noise=NoiseSource([0]),
        callback=lambda s: ends.append(len(stand_in.sigmas)),
        **(options or {}),
    )
    charged = [1 if cost is None else int(cost(s)) for s in stand_in.sigmas]
    if len(ends) != len(sigmas) - 1:
        raise RuntimeError(
            f"bug: {info.name} made {float(sum(charged))} evaluations per sample in {len(ends)} reported steps "
            f"on a grid of {len(sigmas) - 1}"
        )
    if min(charged, default=1) < 1:
        raise ConfigError("an evaluation must cost at least one network evaluation")
    ends[-1:] = [len(charged)] * len(ends[-1:])  # evaluations after the last report (a restart there) count on it
    starts = [0, *ends[:-1]]
    return tuple(sum(charged[a:b]) for a, b in zip(starts, ends, strict=True))


def plan(
    denoiser: Denoiser,
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
    cost: Cost | None = None,
) -> Plan:
    """Plan a run: steps from the budget, the schedule's grid on the clamped range, round_sigma, the endpoint.

    `cost(sigma)` is the network evaluations one evaluation at sigma spends (None: 1 everywhere, today's
    single network); the budget `nfe` is then met exactly under those costs, and `Plan.costs` holds each
    step's. Raises BudgetError when no step count spends the budget (the nearest ones named), ConfigError
    for options that do not apply.
    """
    info = get_solver(solver)
    if endpoint not in ENDPOINTS:
        raise UnknownNameError("endpoint", endpoint, ENDPOINTS)
    if denoise_to_zero and endpoint != "sigma_min":
        raise NotApplicableError(
            "denoise_to_zero applies only to endpoint 'sigma_min' (endpoint 'edm' already ends at 0)"
        )
    kw: dict[str, Any] = {"endpoint": endpoint, "denoise_to_zero": denoise_to_zero, "options": solver_options}
    if cost is None or steps is not None:
        n_steps = resolve_steps(info, nfe=nfe, steps=steps, policy=nfe_policy, **kw)
    grids = _Grids(
        denoiser,
        info,
        schedule,
        dict(schedule_options or {}),
        sigma_min,
        sigma_max,
        endpoint=endpoint,
        denoise_to_zero=denoise_to_zero,
    )
    if cost is None or steps is not None:
        grid, lo, hi = grids(n_steps)
        costs = step_costs(denoiser, info, grid, solver_options, cost)
        spent = info.nfe(n_steps, **kw)
        if cost is None and sum(costs) != spent:
            raise RuntimeError(
                f"bug: {info.name} made {float(sum(costs))} evaluations per sample, its NFE rule {spent}"
            )
        spent = sum(costs)
    else:
        assert nfe is not None
        n_steps, costs = _costed_steps(info, grids, nfe, nfe_policy, solver_options, cost, **kw)
        grid, lo, hi = grids(n_steps)
        spent = sum(costs)
    return Plan(
        solver=info.name,
        schedule=schedule,
        steps=n_steps,
        nfe=spent,
        sigmas=grid,
        endpoint=endpoint,
        denoise_to_zero=denoise_to_zero,
        sigma_min=lo,
        sigma_max=hi,
        requested_nfe=nfe,
        costs=costs,
    )


class _Grids:
    """The planned grid for a step count: the schedule on the clamped range, round_sigma, the final 0 if any."""

    def __init__(
        self,
        denoiser: Denoiser,
        info: SolverInfo,
        schedule: str,
        options: dict[str, Any],
        sigma_min: float | None,
        sigma_max: float | None,
        *,
        endpoint: str,
        denoise_to_zero: bool,
    ):
        self.denoiser, self.info, self.schedule, self.options = denoiser, info, schedule, options
        self.endpoint, self.denoise_to_zero = endpoint, denoise_to_zero
        self.file: torch.Tensor | None = None
        if schedule.startswith("file:"):
            if options:
                raise NotApplicableError(f"schedule options {sorted(options)} do not apply to a file grid")
            self.file = file_grid(schedule[5:])
            g = self.file
            given = [f for f, v in (("--sigma-min", sigma_min), ("--sigma-max", sigma_max)) if v is not None]
            if given:  # a file grid's sigmas are used as given: a range cannot move them
                raise NotApplicableError(
                    f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to a file grid, whose "
                    f"sigmas are fixed ({float(g[0]):.6g} .. {float(g[-1]):.6g} in {schedule[5:]})"
                )
            self.range = sigma_range(denoiser, (float(g[-1]), float(g[0])), float(g[-1]), float(g[0]))
        else:
            self.sched = get_schedule(schedule)
            unknown = set(options) - set(self.sched.options)
            if unknown:
                raise NotApplicableError(
                    f"option(s) {', '.join(sorted(unknown))} do not apply to schedule '{schedule}' "
                    f"(it takes: {', '.join(self.sched.options) or 'none'})"
                )
            self.range = sigma_range(denoiser, self.sched.default_range, sigma_min, sigma_max)

    def __call__(self, n_steps: int) -> tuple[torch.Tensor, float, float]:
        """(grid [points] float64, lo, hi); BudgetError when a file grid has another length."""
        n_points = n_steps if self.endpoint == "edm" else n_steps + 1
        lo, hi = self.range
        if self.file is not None:
            grid = self.file
            if len(grid) != n_points:
                raise BudgetError(
                    f"the grid in {self.schedule[5:]} has {len(grid)} sigmas; {self.info.name} at this budget "
                    f"needs {n_points} (endpoint '{self.endpoint}')"
                )
        else:
            grid = schedule_grid(self.sched, n_points, lo, hi, self.options)
        grid = torch.as_tensor(self.denoiser.round_sigma(grid.to(torch.float64)), dtype=torch.float64).reshape(-1)
        if self.endpoint == "edm" or self.denoise_to_zero:
            grid = torch.cat([grid, grid.new_zeros(1)])
        return grid, lo, hi


def _costed_steps(
    info: SolverInfo,
    grids: _Grids,
    nfe: int,
    policy: str,
    solver_options: dict[str, Any] | None,
    cost: Cost,
    **kw: Any,
) -> tuple[int, tuple[int, ...]]:
    """The fewest steps whose evaluations cost exactly `nfe` under `cost` (or the policy's fallback).

    Every evaluation costs >= 1, so a step count whose unit-cost NFE exceeds the budget (or the nearest
    budget above it found so far) cannot do better: the search stops there.
    """
    if nfe < 1:
        raise BudgetError(f"nfe must be >= 1, got {nfe}")
    if policy not in NFE_POLICIES:
        raise UnknownNameError("nfe policy", policy, NFE_POLICIES)
    found: dict[int, tuple[int, tuple[int, ...]]] = {}  # total -> (steps, costs), fewest steps first
    n = info.min_steps
    while True:
        above = min((t for t in found if t > nfe), default=None)
        floor = info.nfe(n, **kw)
        if floor > nfe and (above is None or floor >= above):
            break
        try:
            grid, _, _ = grids(n)
        except BudgetError:  # a file grid fits one step count only
            grid = None
        if grid is not None:
            costs = step_costs(grids.denoiser, info, grid, solver_options, cost)
            found.setdefault(sum(costs), (n, costs))
            if sum(costs) == nfe:
                return found[nfe]
        n += 1
    below = max((t for t in found if t < nfe), default=None)
    above = min((t for t in found if t > nfe), default=None)
    if policy == "floor" and below is not None:
        return found[below]
    if policy == "nearest" and (below is not None or above is not None):
        return found[min((b for b in (below, above) if b is not None), key=lambda b: (abs(b - nfe), b))]
    near = " or ".join(str(b) for b in (below, above) if b is not None) or "none"
    raise BudgetError(
        f"{info.name} cannot spend exactly {nfe} network evaluations under these evaluation costs; "
        f"nearest reachable: {near}. Use --nfe-policy nearest|floor to accept one"
    )
