"""The sampler spec: every design-space option under the one vocabulary of DESIGN.md, validated once."""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch

from diffbench.errors import ConfigError, UnknownNameError
from diffbench.sampling.noise import NOISE_MODES
from diffbench.sampling.ode import SCALING, SIGMA_T
from diffbench.sampling.schedules import get_schedule
from diffbench.sampling.solvers import get_solver

DTYPES = {"float64": torch.float64, "float32": torch.float32}

# options that belong to a solver (validated against SolverInfo.options); None means "not given"
SOLVER_OPTIONS = (
    "alpha",
    "S_churn",
    "S_min",
    "S_max",
    "S_noise",
    "churn_per_step",
    "eta",
    "order",
    "lower_order_final",
    "analytic_first_step",
    "variant",
    "prediction",
    "restart_n",
    "restart_k",
    "restart_tmin",
    "restart_tmax",
    "restart_gamma",
)
SCHEDULE_OPTIONS = ("rho", "epsilon_s", "M", "C_1", "C_2")


@dataclass(frozen=True)
class SamplerSpec:
    """A full sampler setting: solver, grid, budget, endpoint convention, ODE axes and solver options."""

    solver: str = "heun"
    schedule: str = "edm"
    nfe: int | None = None
    steps: int | None = None
    endpoint: str = "edm"
    denoise_to_zero: bool = False
    nfe_policy: str = "exact"
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float | None = None
    epsilon_s: float | None = None
    M: int | None = None
    C_1: float | None = None
    C_2: float | None = None
    sigma_t: str = "linear"
    scaling: str = "none"
    alpha: float | None = None
    S_churn: float | None = None
    S_min: float | None = None
    S_max: float | None = None
    S_noise: float | None = None
    churn_per_step: float | None = None
    eta: float | None = None
    order: int | None = None
    lower_order_final: str | int | None = None
    analytic_first_step: bool | None = None
    variant: str | None = None
    prediction: str | None = None
    restart_n: int | None = None
    restart_k: int | None = None
    restart_tmin: float | None = None
    restart_tmax: float | None = None
    restart_gamma: float | None = None
    noise: str = "independent"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        info = get_solver(self.solver)
        if self.nfe is None and self.steps is None:
            object.__setattr__(self, "steps", 18)  # EDM's generate.py default (NFE 35 with heun)
        given = [k for k in SOLVER_OPTIONS if getattr(self, k) is not None]
        wrong = [k for k in given if k not in info.options]
        if wrong:
            raise ConfigError(
                f"option(s) {', '.join(wrong)} do not apply to solver '{self.solver}' "
                f"(it takes: {', '.join(info.options) or 'none'})"
            )
        if self.order is not None and self.order not in (info.orders or (info.order,)):
            raise ConfigError(
                f"{self.solver} supports order {', '.join(map(str, info.orders or (info.order,)))}; got {self.order}"
            )
        if self.analytic_first_step is False:
            object.__setattr__(self, "analytic_first_step", None)
        if self.lower_order_final is not None:
            from diffbench.sampling.solvers.exponential import check_lower_order_final

            object.__setattr__(self, "lower_order_final", check_lower_order_final(self.lower_order_final))
        if self.noise not in NOISE_MODES:
            raise UnknownNameError("noise mode", self.noise, NOISE_MODES)
        if self.noise != "independent" and not (info.stochastic or info.churn or "eta" in info.options):
            raise ConfigError(f"--noise {self.noise} applies to stochastic solvers; '{self.solver}' draws no noise")
        if (self.sigma_t, self.scaling) != ("linear", "none") and not info.ode_axes:
            raise ConfigError(f"sigma_t/scaling apply to the euler/heun family, not to '{self.solver}'")
        if self.sigma_t not in SIGMA_T:
            raise UnknownNameError("sigma_t", self.sigma_t, SIGMA_T)
        if self.scaling not in SCALING:
            raise UnknownNameError("scaling", self.scaling, SCALING)
        if self.dtype not in DTYPES:
            raise UnknownNameError("dtype", self.dtype, DTYPES)
        for k in ("S_churn", "S_noise", "churn_per_step", "eta"):
            v = getattr(self, k)
            if v is not None and (v < 0 or not math.isfinite(v)):
                raise ConfigError(f"{k} must be a finite number >= 0, got {v}")
        self._check_options(info)

    def _check_options(self, info: Any) -> None:
        """Every option checked here, before a run creates any output (the solvers check again)."""
        defaults = info.defaults()
        s_min = self.S_min if self.S_min is not None else defaults.get("S_min", 0.0)
        s_max = self.S_max if self.S_max is not None else defaults.get("S_max", math.inf)
        for k, v in (("S_min", self.S_min), ("S_max", self.S_max)):
            if v is not None and (math.isnan(v) or v < 0):
                raise ConfigError(f"{k} must be a number >= 0, got {v}")
        if "S_min" in info.options and s_min > s_max:
            raise ConfigError(
                f"the churn window [S_min, S_max] = [{s_min:g}, {s_max:g}] is empty: S_min must not exceed S_max"
            )
        if self.alpha is not None and not 0 < self.alpha <= 1:
            raise ConfigError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.variant is not None:
            from diffbench.sampling.solvers import VARIANT_VALUES

            if self.variant not in VARIANT_VALUES.get(self.solver, ()):
                raise UnknownNameError(f"{self.solver} variant", self.variant, VARIANT_VALUES.get(self.solver, ()))
        if self.rho is not None and not (math.isfinite(self.rho) and self.rho > 0):
            raise ConfigError(f"rho must be a finite number > 0, got {self.rho}")
        if self.solver == "restart":
            from diffbench.sampling.solvers.restart import check_restart

            opts = {**defaults, **self.solver_options()}
            check_restart(
                opts["restart_n"], opts["restart_k"], opts["restart_tmin"], opts["restart_tmax"], opts["restart_gamma"]
            )

    @classmethod
    def make(cls, **kwargs: Any) -> SamplerSpec:
        """Build from keywords; an unknown keyword is one clear error, not a silent default."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise UnknownNameError("sampler option", unknown[0], names)
        return cls(**kwargs)

    def solver_options(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SOLVER_OPTIONS if getattr(self, k) is not None}

    def schedule_options(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SCHEDULE_OPTIONS if getattr(self, k) is not None}

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def has_churn(self) -> bool:
        return bool((self.S_churn or 0) > 0 or (self.churn_per_step or 0) > 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolved_spec(spec: SamplerSpec) -> dict[str, Any]:
    """The sampler spec with every default written as the value used (rho 7, S_churn 0), never null.

    Options that do not apply to the solver or schedule are dropped; the values come from the spec when
    given, else from the solver's registered defaults and the schedule function's keyword defaults.
    """
    d = spec.to_dict()
    info = get_solver(spec.solver)
    out = {k: v for k, v in d.items() if k not in SOLVER_OPTIONS and k not in SCHEDULE_OPTIONS}
    defaults = info.defaults()
    for k in info.options:
        out[k] = d.get(k) if d.get(k) is not None else defaults.get(k)
    if not spec.schedule.startswith("file:"):
        for k, p in inspect.signature(get_schedule(spec.schedule).fn).parameters.items():
            if k in SCHEDULE_OPTIONS and p.default is not p.empty:
                out[k] = d.get(k) if d.get(k) is not None else p.default
    return {k: out[k] for k in d if out.get(k) is not None}
