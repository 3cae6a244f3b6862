"""The solver registry: name -> plain function, its order, NFE rule, stochasticity and source paper.

Every solver is `fn(denoiser, x, sigmas, *, noise, callback=None, **options) -> x_final`, where
`denoiser(x, sigma)` returns D(x; sigma) with class labels already bound, `x` is the state at sigmas[0]
in EDM space, and `sigmas` is the full grid of the plan (descending; a final 0 when the run ends at 0).
NFE rule: `evals_per_step` network calls on a step to sigma > 0, `evals_final` on a step to sigma = 0.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from diffbench.denoiser import BoundDenoiser
from diffbench.errors import UnknownNameError
from diffbench.sampling.vocabulary import ENDPOINTS, PREDICTIONS  # noqa: F401  (re-exported)

# the values of the `variant` option, per solver (the first is the default)
VARIANT_VALUES: dict[str, tuple[str, ...]] = {
    "dpmpp-3m": ("published", "taylor"),
    "dpm-solver-3m": ("published", "taylor"),
    "unipc": ("bh2", "bh1"),
}


@dataclass(frozen=True)
class StepInfo:
    """What a solver reports after each step: index, the interval, the new state and the last denoised."""

    i: int
    n: int
    sigma: float
    sigma_next: float
    x: torch.Tensor
    denoised: torch.Tensor


Callback = Callable[[StepInfo], None]


def intervals(steps: int, *, endpoint: str, denoise_to_zero: bool = False) -> tuple[int, int]:
    """(steps to sigma > 0, steps to sigma = 0) for `steps` steps under an endpoint convention (REFERENCE §4)."""
    if endpoint == "edm":  # N sigmas down to sigma_min, then one step to 0
        return steps - 1, 1
    return steps, int(denoise_to_zero)  # N+1 sigmas ending at sigma_min; optional final denoise


@dataclass(frozen=True)
class SolverInfo:
    """One registry entry (DESIGN.md); `options` are the keyword options the function accepts."""

    name: str
    fn: Callable[..., torch.Tensor]
    order: int
    stochastic: bool
    paper: str
    evals_per_step: int = 1
    evals_final: int = 1
    options: tuple[str, ...] = field(default=())
    churn: bool = False  # accepts EDM churn (S_churn, ...): stochastic when churn > 0
    ode_axes: bool = False  # honours sigma_t / scaling (EDM's general ODE)
    orders: tuple[int, ...] = ()  # the values `order` may take (empty: the option does not apply)
    min_steps: int = 1
    corrector_order: int = 0  # orders a corrector adds to `order` (UniC: +1)
    extra_nfe: Callable[[dict[str, Any]], int] = field(default=lambda options: 0)  # e.g. -1 for AFS
    # global convergence order on EDM's rho = 7 grid for the given options (default: order option + corrector)
    convergence: Callable[[dict[str, Any]], int] | None = None
    order_note: str = ""  # where another order holds (e.g. iPNDM: its `order` on uniform grids only)
    last_step: str = "the step to sigma = 0 (endpoint edm, or denoise_to_zero) is x = D(x; sigma_last): 1 NFE"
    conventions: dict[str, str] = field(default_factory=dict)  # e.g. the DEIS variant

    def convergence_order(self, options: dict[str, Any] | None = None) -> int:
        """The order at which the error falls with the step count on EDM's rho = 7 grid, for these options."""
        options = {**self.defaults(), **(options or {})}
        if self.convergence is not None:
            return self.convergence(options)
        return int(options.get("order", self.order)) + self.corrector_order

    def defaults(self) -> dict[str, Any]:
        """Each option's default value, from the solver function's signature."""
        params = inspect.signature(self.fn).parameters
        return {k: params[k].default for k in self.options if k in params}

    @property
    def nfe_rule(self) -> str:
        e, f = self.evals_per_step, self.evals_final
        return f"{e} per step" if e == f else f"{e} per step, {f} on a final step to 0"

    def nfe(
        self,
        steps: int,
        *,
        endpoint: str = "edm",
        denoise_to_zero: bool = False,
        options: dict[str, Any] | None = None,
    ) -> int:
        """Network evaluations per sample for a plan of `steps` steps."""
        k, z = intervals(steps, endpoint=endpoint, denoise_to_zero=denoise_to_zero)
        return self.evals_per_step * k + self.evals_final * z + self.extra_nfe(options or {})

    def steps_for(
        self,
        nfe: int,
        *,
        endpoint: str = "edm",
        denoise_to_zero: bool = False,
        options: dict[str, Any] | None = None,
    ) -> int | None:
        """The step count that spends exactly `nfe` evaluations, or None when none does (NFE grows with the
        step count: every step to sigma > 0 evaluates at least once)."""
        steps = self.min_steps
        while (got := self.nfe(steps, endpoint=endpoint, denoise_to_zero=denoise_to_zero, options=options)) < nfe:
            steps += 1
        return steps if got == nfe else None

    def describe(self) -> dict[str, Any]:
        """The registry entry as plain data (`diffbench solvers --json`).

        "order" is the convergence order that holds on EDM's rho = 7 grid with the default options (measured
        by tests/test_solver_orders.py); "method_order" the default of the `order` option; "convergence_orders"
        the order for each value of `order` / `variant`.
        """
        defaults = self.defaults()
        settings: dict[str, int] = {}
        for o in self.orders:
            settings[f"order={o}"] = self.convergence_order({"order": o})
        for v in VARIANT_VALUES.get(self.name, ()):
            settings[f"variant={v}"] = self.convergence_order({"variant": v})
        return {
            "name": self.name,
            "order": self.convergence_order(),
            "method_order": self.order,
            "orders": list(self.orders or (self.order,)),
            "convergence_order": self.convergence_order(),
            "convergence_orders": settings,
            "order_note": self.order_note,
            "stochastic": self.stochastic,
            "nfe_rule": self.nfe_rule,
            "churn": self.churn,
            "options": list(self.options),
            "defaults": {k: (v if v != math.inf else "inf") for k, v in defaults.items()},
            "lower_order_final": defaults.get("lower_order_final"),
            "last_step": self.last_step,
            **({"conventions": dict(self.conventions)} if self.conventions else {}),
            "paper": self.paper,
        }


SOLVERS: dict[str, SolverInfo] = {}


def register_solver(info: SolverInfo) -> SolverInfo:
    """Add a solver; a duplicate name, or a step that makes no network evaluation, is refused."""
    if info.name in SOLVERS:
        raise ValueError(f"solver '{info.name}' is already registered")
    if info.evals_per_step < 1:  # the NFE must grow with the step count (steps_for relies on it)
        raise ValueError(f"solver '{info.name}': evals_per_step must be >= 1, got {info.evals_per_step}")
    SOLVERS[info.name] = info
    return info


def solver(name: str, **kwargs: Any) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator form of register_solver."""

    def wrap(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        register_solver(SolverInfo(name=name, fn=fn, **kwargs))
        return fn

    return wrap


def get_solver(name: str) -> SolverInfo:
    _load_builtin()
    if name not in SOLVERS:
        raise UnknownNameError("solver", name, SOLVERS)
    return SOLVERS[name]


def all_solvers() -> list[SolverInfo]:
    _load_builtin()
    return list(SOLVERS.values())


def _load_builtin() -> None:
    from diffbench.sampling.solvers import edm  # noqa: F401, I001  (modules register on import, in listing order)
    from diffbench.sampling.solvers import ancestral  # noqa: F401
    from diffbench.sampling.solvers import exponential  # noqa: F401
    from diffbench.sampling.solvers import unipc  # noqa: F401
    from diffbench.sampling.solvers import multistep  # noqa: F401
    from diffbench.sampling.solvers import restart  # noqa: F401


def order_at(j: int, n: int, order: int, lower_order_final: str | int = "always", history: int = 0) -> int:
    """Order used at step j of n: warm-up min(order, j + 1 + history), then lower-order final steps.

    lower_order_final: "always" (last steps drop to min(order, n - j)), "never", or an int N (only when
    n < N, as DPM-Solver (N = 10) and diffusers (N = 15) do) (REFERENCE §4).
    """
    p = min(order, j + 1 + history)
    if lower_order_final == "always" or (isinstance(lower_order_final, int) and n < lower_order_final):
        p = min(p, n - j)
    return max(p, 1)


def push_history(hist: list[tuple[float, Any]], sigma: float, value: Any, keep: int) -> list[tuple[float, Any]]:
    """Append (sigma, value) and keep the last `keep` entries; an entry at the same sigma is replaced.

    round_sigma of a discrete model can merge grid points: a zero-length step leaves x unchanged, and a
    repeated sigma in a multistep history would make its divided differences 0/0.
    """
    return [*(h for h in hist if h[0] != sigma), (sigma, value)][-max(keep, 1) :]


def round_sigma(denoiser: BoundDenoiser, sigma: float) -> float:
    """The denoiser's round_sigma on a float (identity when it has none)."""
    fn = getattr(denoiser, "round_sigma", None)
    return sigma if fn is None else float(fn(torch.tensor(sigma, dtype=torch.float64)))
