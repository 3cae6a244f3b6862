"""The sampler spec: every design-space option under the one vocabulary of DESIGN.md, validated once."""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from dataclasses import dataclass
from typing import Any

from diffbench.errors import ConfigError, NotApplicableError, UnknownNameError
from diffbench.sampling.vocabulary import (
    DTYPES,
    ENDPOINTS,
    NET_DTYPES,
    NFE_POLICIES,
    NOISE_MODES,
    PREDICTIONS,
    SCALING,
    SIGMA_T,
)

if typing.TYPE_CHECKING:
    import torch

    from diffbench.sampling.solvers import SolverInfo


@dataclass(frozen=True)
class OptionInfo:
    """How one SamplerSpec field appears to users: the one declaration the CLI, the checks and sweeps derive from.

    `applies`: "solver" (checked against SolverInfo.options), "schedule" (passed to the schedule), or None.
    `choices`, `min` (inclusive), `positive` (> 0, finite) and `max` (inclusive) are checked on the spec and
    on the command line alike; `planned` bounds are checked by the planner (against the model's range)
    instead. `cli` False keeps a field library-only; `flag` defaults to --key-in-lower-case.
    """

    help: str
    flag: str | None = None
    choices: tuple[str, ...] = ()
    min: float | None = None
    positive: bool = False
    max: float | None = None
    applies: str | None = None
    cli: bool = True
    planned: bool = False


def option(default: Any = None, **info: Any) -> Any:
    """A SamplerSpec field with its OptionInfo (DESIGN.md, "One vocabulary"): a new option is one such line."""
    return dataclasses.field(default=default, metadata={"option": OptionInfo(**info)})


@dataclass(frozen=True)
class SamplerSpec:
    """A full sampler setting: solver, grid, budget, endpoint convention, ODE axes and solver options.

    Each field is declared once with its OptionInfo; `SOLVER_OPTIONS`, `SCHEDULE_OPTIONS`, the CLI flags
    (cli/options.py) and the sweep axes are derived from these declarations.
    """

    solver: str = option("heun", help="Solver name (see `diffbench solvers`).")
    schedule: str = option("edm", help="Sigma grid (see `diffbench schedules`), or file:PATH.")
    nfe: int | None = option(help="Exact network evaluations per sample.", min=1, planned=True)
    steps: int | None = option(help="Step count instead of --nfe (default 18).", min=1, planned=True)
    endpoint: str = option(
        "edm", help="edm: grid to sigma_min, then one step to 0; sigma_min: stop there.", choices=ENDPOINTS
    )
    denoise_to_zero: bool = option(False, help="With --endpoint sigma_min: one final step to 0.")
    nfe_policy: str = option(
        "exact",
        help="When --nfe is unreachable: exact refuses, nearest/floor pick a reachable budget.",
        choices=NFE_POLICIES,
    )
    sigma_min: float | None = option(help="Lowest sigma of the grid.", positive=True, planned=True)
    sigma_max: float | None = option(help="Highest sigma of the grid.", positive=True, planned=True)
    rho: float | None = option(help="rho of the edm grid (default 7).", positive=True, applies="schedule")
    epsilon_s: float | None = option(help="epsilon_s of the vp grid (EDM Table 1).", applies="schedule", cli=False)
    M: int | None = option(help="M of the iDDPM grid.", applies="schedule", cli=False)
    C_1: float | None = option(help="C_1 of the iDDPM grid.", applies="schedule", cli=False)
    C_2: float | None = option(help="C_2 of the iDDPM grid.", applies="schedule", cli=False)
    sigma_t: str = option("linear", help="sigma(t) of EDM's ODE (euler/heun family).", choices=SIGMA_T)
    scaling: str = option("none", help="s(t) of EDM's ODE (euler/heun family).", choices=SCALING)
    alpha: float | None = option(
        help="Heun family, in (0, 1]: 1 Heun, 0.5 midpoint (EDM Alg. 1).", positive=True, max=1, applies="solver"
    )
    S_churn: float | None = option(
        help="EDM S_churn (total over the run; EDM Alg. 2).", flag="--churn", min=0, applies="solver"
    )
    S_min: float | None = option(help="EDM S_min: churn only where sigma >= S_min.", min=0, applies="solver")
    S_max: float | None = option(help="EDM S_max: churn only where sigma <= S_max.", min=0, applies="solver")
    S_noise: float | None = option(help="EDM S_noise: scale of the churn noise.", min=0, applies="solver")
    churn_per_step: float | None = option(help="EDM gamma per step, independent of N.", min=0, applies="solver")
    eta: float | None = option(help="Ancestral / DDIM / SDE noise (0 deterministic).", min=0, applies="solver")
    order: int | None = option(help="Order of a multistep / UniPC / DPM-Solver solver.", min=1, applies="solver")
    lower_order_final: str | int | None = option(
        help="Multistep: lower orders on the last steps: always, never, or N (only below N steps).", applies="solver"
    )
    analytic_first_step: bool | None = option(
        help="Analytic first step: saves one NFE (multistep).", flag="--afs", applies="solver"
    )
    variant: str | None = option(
        help="Solver variant: UniPC B(h) bh2 or bh1; dpmpp-3m / dpm-solver-3m published or taylor.", applies="solver"
    )
    prediction: str | None = option(help="UniPC form: data or noise.", choices=PREDICTIONS, applies="solver")
    restart_n: int | None = option(help="Restart N_Restart: grid points per restart (3).", min=2, applies="solver")
    restart_k: int | None = option(help="Restart K: number of restarts (2).", min=0, applies="solver")
    restart_tmin: float | None = option(
        help="Restart t_min: sigma where it restarts (0.06).", positive=True, applies="solver"
    )
    restart_tmax: float | None = option(
        help="Restart t_max: sigma it jumps up to (0.30).", positive=True, applies="solver"
    )
    restart_gamma: float | None = option(
        help="Restart: churn on the inner steps (0; the paper's runs 0.05).", min=0, applies="solver"
    )
    noise: str = option(
        "independent",
        help="Step noise: independent (EDM's per-seed stream) or brownian (a per-seed Brownian path).",
        choices=NOISE_MODES,
    )
    dtype: str = option("float64", help="Sampler state dtype.", choices=DTYPES)
    guidance: float | None = option(
        help="Guidance weight w: D = D_ref + w (D - D_ref) (EDM2; 1 = none). A guided evaluation costs 2 NFE.", min=0
    )
    guide: str | None = option(
        help="D_ref of --guidance: null (the same network, null label; the default) or a model name "
        "(an unconditional model: classifier-free; a weaker version: autoguidance)."
    )
    guidance_interval: str | None = option(
        help="LO,HI: guidance only where LO < sigma <= HI (in a sweep list write LO:HI)."
    )
    classifier_guidance: float | None = option(
        help="Classifier guidance scale s: D + s sigma^2 grad log p(c|x,sigma) (Dhariwal & Nichol; 0 = none). "
        "Each evaluation adds 1 classifier evaluation (forward + backward) to the NFE.",
        min=0,
    )
    classifier: str | None = option(
        help="Noise-conditional classifier of --classifier-guidance: digits-noisy-classifier or "
        "package.module:factory (a module (x, sigma) -> logits)."
    )
    # the network's precision and compilation (sampling/precision.py); `dtype` above stays the sampler state's
    net_dtype: str | None = option(
        help="Network precision fp32, fp16 or bf16 (autocast; the sampler state keeps --dtype). "
        "Default: the network's own.",
        choices=NET_DTYPES,
    )
    compile: bool | None = option(help="torch.compile the network (once per input shape; eager if torch cannot).")
    tf32: bool | None = option(help="Allow TF32 matmuls and convolutions on CUDA (off by default).")
    prior: str | None = option(
        help="Start from an auxiliary prior of the noised data instead of N(0, sigma_max^2 I): file:PRIOR.npz "
        "(diffbench fit-prior; --sigma-max must equal its sigma) or ideal:SOURCE (the data plus noise; copies it)."
    )

    def __post_init__(self) -> None:
        from diffbench.sampling.solvers import get_solver  # the registries load torch: not at import (--help)

        info = get_solver(self.solver)
        if self.nfe is None and self.steps is None:
            object.__setattr__(self, "steps", 18)  # EDM's generate.py default (NFE 35 with heun)
        given = [k for k in SOLVER_OPTIONS if getattr(self, k) is not None]
        wrong = [k for k in given if k not in info.options]
        if wrong:
            raise NotApplicableError(
                f"option(s) {', '.join(wrong)} do not apply to solver '{self.solver}' "
                f"(it takes: {', '.join(info.options) or 'none'})"
            )
        if self.order is not None and self.order not in (info.orders or (info.order,)):
            raise NotApplicableError(
                f"{self.solver} supports order {', '.join(map(str, info.orders or (info.order,)))}; got {self.order}"
            )
        for k in ("analytic_first_step", "compile", "tf32"):  # False is the default: left out of the identity
            if getattr(self, k) is False:
                object.__setattr__(self, k, None)
        if self.lower_order_final is not None:
            from diffbench.sampling.solvers.exponential import check_lower_order_final

            object.__setattr__(self, "lower_order_final", check_lower_order_final(self.lower_order_final))
        if self.noise not in NOISE_MODES:
            raise UnknownNameError("noise mode", self.noise, NOISE_MODES)
        if self.noise != "independent" and not (info.stochastic or info.churn or "eta" in info.options):
            raise NotApplicableError(
                f"--noise {self.noise} applies to stochastic solvers; '{self.solver}' draws no noise"
            )
        if (self.sigma_t, self.scaling) != ("linear", "none") and not info.ode_axes:
            raise NotApplicableError(f"sigma_t/scaling apply to the euler/heun family, not to '{self.solver}'")
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
        self._check_declared()
        self._check_guidance()
        if self.prior is not None:
            from diffbench.priors import check_prior_text

            check_prior_text(self.prior)

    def _check_guidance(self) -> None:
        """--guide and --guidance-interval need --guidance; the interval must read LO,HI with 0 <= LO < HI;
        --classifier-guidance and --classifier come together."""
        if (self.classifier_guidance is None) != (self.classifier is None):
            raise ConfigError(
                "--classifier-guidance W needs --classifier NAME (e.g. digits-noisy-classifier)"
                if self.classifier is None
                else "--classifier applies only with classifier guidance (give --classifier-guidance W)"
            )
        if self.classifier_guidance is not None and not math.isfinite(self.classifier_guidance):
            raise ConfigError(f"--classifier-guidance must be a finite number >= 0, got {self.classifier_guidance}")
        if self.guidance is None:
            given = [k for k in ("guide", "guidance_interval") if getattr(self, k) is not None]
            if given:
                flags = " and ".join("--" + k.replace("_", "-") for k in given)
                verb = "applies" if len(given) == 1 else "apply"
                raise ConfigError(f"{flags} {verb} only with guidance (give --guidance W)")
            return
        if not math.isfinite(self.guidance):
            raise ConfigError(f"--guidance must be a finite number >= 0, got {self.guidance}")
        if self.guidance_interval is not None:
            from diffbench.sampling.guidance import parse_interval

            parse_interval(self.guidance_interval)

    def _check_options(self, info: SolverInfo) -> None:
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

    def _check_declared(self) -> None:
        """The declared choices and bounds of every given option (after the specific checks above)."""
        for f in dataclasses.fields(self):
            o, v = option_info(f.name), getattr(self, f.name)
            if v is None or o.planned or isinstance(v, bool):
                continue
            if o.choices and v not in o.choices:
                raise UnknownNameError(f.name.replace("_", " "), v, o.choices)
            if isinstance(v, (int, float)):
                if o.positive and not (v > 0 and math.isfinite(v)):
                    raise ConfigError(f"{f.name} must be a finite number > 0, got {v}")
                if o.min is not None and not v >= o.min:
                    raise ConfigError(f"{f.name} must be >= {o.min:g}, got {v}")
                if o.max is not None and not v <= o.max:
                    raise ConfigError(f"{f.name} must be <= {o.max:g}, got {v}")

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
        import torch

        return {"float64": torch.float64, "float32": torch.float32}[self.dtype]

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
    from diffbench.sampling.schedules import get_schedule
    from diffbench.sampling.solvers import get_solver

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


def option_info(key: str) -> OptionInfo:
    """The declaration of one SamplerSpec field (KeyError for a name that is not one)."""
    return _INFO[key]


def declared_options() -> list[tuple[str, Any, Any, OptionInfo]]:
    """(key, type annotation, default, OptionInfo) of every SamplerSpec field, in declaration order."""
    hints = typing.get_type_hints(SamplerSpec)
    return [(f.name, hints[f.name], f.default, _INFO[f.name]) for f in dataclasses.fields(SamplerSpec)]


_INFO: dict[str, OptionInfo] = {f.name: f.metadata["option"] for f in dataclasses.fields(SamplerSpec)}
# options that belong to a solver (validated against SolverInfo.options) or to a schedule; None means "not given"
SOLVER_OPTIONS = tuple(k for k, o in _INFO.items() if o.applies == "solver")
SCHEDULE_OPTIONS = tuple(k for k, o in _INFO.items() if o.applies == "schedule")
