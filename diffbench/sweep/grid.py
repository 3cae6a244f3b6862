"""A sweep grid: the product of sampler-option axes, per-cell overrides, and the cells that cannot run (skipped).

A cell whose budget the solver cannot hit is listed as skipped with the planner's reason, never silently
changed; under nfe_policy 'nearest' or 'floor' it runs and records the NFE actually spent. An axis value that
is invalid in every cell it appears in is an error (a typo, a negative churn), not a skip.

Crossing a solver-specific option with solvers that do not take it (`--churn 0,40 --solver heun,dpmpp-2m`)
runs those solvers once, without it, and lists the option once as not applicable. Cells that are the same
sampler although an axis value differs (EDM's per-step churn cap) carry a note saying so.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from diffbench.errors import BudgetError, ConfigError, NotApplicableError, UnknownNameError
from diffbench.sampling.plan import Plan
from diffbench.sampling.run import plan_spec
from diffbench.sampling.solvers import get_solver
from diffbench.sampling.spec import SOLVER_OPTIONS, SamplerSpec

# options whose "off" value is what a solver without the option does anyway: dropped there, not skipped
NEUTRAL = {"S_churn": 0.0, "churn_per_step": 0.0, "eta": 0.0}
# options that never appear in a configuration's label (they are the table's columns)
BUDGET_KEYS = ("nfe", "steps")
CHURN_KEYS = ("S_churn", "churn_per_step")  # EDM's gamma_i = min(S_churn / N, sqrt2 - 1), or given per step


@dataclass(frozen=True)
class Cell:
    """One grid point: its spec and plan, or the reason it is skipped; `config` labels its table row."""

    config: str
    options: dict[str, Any]  # spec keywords as given (after overrides)
    nfe: int | None  # requested budget (the table's column)
    spec: SamplerSpec | None = None
    plan: Plan | None = field(default=None, repr=False)
    skipped: str | None = None
    note: str | None = None  # e.g. the same sampler as another cell (a cap makes two axis values equal)

    @property
    def nfe_spent(self) -> int | None:
        """The NFE the plan counts (differs from `nfe` only under nfe_policy nearest/floor)."""
        return None if self.plan is None else self.plan.nfe


@dataclass(frozen=True)
class Grid:
    """Cells in axis order (the last axis varies fastest)."""

    cells: tuple[Cell, ...]
    axes: dict[str, list[Any]]
    not_applicable: tuple[str, ...] = ()  # options crossed with solvers that do not take them, once each

    @property
    def runnable(self) -> list[Cell]:
        return [c for c in self.cells if c.skipped is None]

    @property
    def skipped(self) -> list[Cell]:
        return [c for c in self.cells if c.skipped is not None]


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def config_label(options: Mapping[str, Any], keys: Sequence[str], names: Mapping[str, str] | None = None) -> str:
    """'heun edm churn=40': solver and schedule, then the other labelled options as name=value. A budget
    policy other than exact is always labelled (its cells spend another NFE than their column says), so they
    never share a label with the exact cells of the same configuration in one store."""
    names = names or {}
    parts = [str(options.get("solver", "heun")), str(options.get("schedule", "edm"))]
    keys = list(keys)
    if options.get("nfe_policy", "exact") != "exact" and "nfe_policy" not in keys:
        keys.append("nfe_policy")
    for k in keys:
        if k in ("solver", "schedule") or k in BUDGET_KEYS or k not in options:
            continue
        parts.append(f"{names.get(k, k)}={_show(options[k])}")
    return " ".join(parts)


def _matches(options: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    def same(a: Any, b: Any) -> bool:
        if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
            return float(a) == float(b)
        return a == b

    return all(k in options and same(options[k], v) for k, v in where.items())


def _build(model: Any, options: dict[str, Any]) -> tuple[SamplerSpec | None, Plan | None, str | None]:
    """(spec, plan, skip reason). A setting that does not apply to its solver or schedule, or a budget it
    cannot hit, is a skip; any other invalid value is an error (raised)."""
    opts = dict(options)
    info = get_solver(str(opts.get("solver", "heun")))
    for k, off in NEUTRAL.items():
        if k in opts and k not in info.options and opts[k] is not None and float(opts[k]) == off:
            del opts[k]
    spec: SamplerSpec | None = None
    try:
        spec = SamplerSpec.make(**opts)
        return spec, plan_spec(model, spec), None
    except (BudgetError, NotApplicableError) as exc:
        return spec, None, str(exc)


def make_grid(
    model: Any,
    axes: Mapping[str, Sequence[Any]],
    *,
    fixed: Mapping[str, Any] | None = None,
    overrides: Sequence[Mapping[str, Any]] = (),
    names: Mapping[str, str] | None = None,
) -> Grid:
    """Cells of the product of `axes` (spec keyword -> values) over `fixed` options, with overrides applied.

    overrides: [{'where': {key: value}, 'set': {key: value}}]; later ones win. `names` maps spec keywords to
    the flag names used in labels and errors (e.g. S_churn -> --churn). Raises ConfigError for an empty axis,
    a key in both axes and fixed, or an axis value that is invalid wherever it appears.
    """
    names = names or {}
    fixed = dict(fixed or {})
    axes = {k: list(v) for k, v in axes.items()}
    # a solver-specific option crossed with solvers that do not take it: those run once, without it
    crossing = {
        k
        for k in [*axes, *fixed]
        if k in SOLVER_OPTIONS and (len(axes.get(k, [])) > 1 or len(axes.get("solver", [])) > 1)
    }
    for k, v in axes.items():
        if not v:
            raise ConfigError(f"axis {names.get(k, k)} has no values")
        if len(set(map(repr, v))) != len(v):
            raise ConfigError(f"axis {names.get(k, k)} repeats a value: {', '.join(map(_show, v))}")
        if k in fixed:
            raise ConfigError(f"{names.get(k, k)} is given both as an axis and as a fixed option")
    keys = list(axes)
    # labelled keys: every axis with more than one value, and every key an override sets
    shown = [k for k in keys if len(axes[k]) > 1]
    for o in overrides:
        shown += [k for k in o.get("set", {}) if k not in shown]
    cells: list[Cell] = []
    seen: set[str] = set()
    used = [False] * len(overrides)
    dropped: dict[str, list[str]] = {}  # option -> solvers it was dropped for
    for values in itertools.product(*(axes[k] for k in keys)):
        point = dict(zip(keys, values))
        options = {**fixed, **point}
        set_here: set[str] = set()
        for j, o in enumerate(overrides):
            if _matches(options, o.get("where", {})):
                options.update(o.get("set", {}))
                set_here |= set(o.get("set", {}))
                used[j] = True
        solver = str(options.get("solver", "heun"))
        taken = set(get_solver(solver).options)
        for k in [k for k in options if k in crossing and k not in taken and k not in set_here]:
            del options[k]
            if solver not in dropped.setdefault(k, []):
                dropped[k].append(solver)
        key = repr(sorted(options.items(), key=lambda kv: kv[0]))
        if key in seen:  # the same cell once an option that does not apply is dropped
            continue
        seen.add(key)
        try:
            spec, p, reason = _build(model, options)
        except ConfigError as exc:
            where = ", ".join(f"{names.get(k, k)} {_show(v)}" for k, v in point.items() if len(axes[k]) > 1)
            raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None
        nfe = options.get("nfe")
        cells.append(
            Cell(
                config=config_label(options, shown, names),
                options=options,
                nfe=None if nfe is None else int(nfe),
                spec=spec,
                plan=p,
                skipped=reason,
            )
        )
    for j, o in enumerate(overrides):
        if not used[j]:
            where = ", ".join(f"{names.get(k, k)} = {_show(v)}" for k, v in o.get("where", {}).items())
            raise ConfigError(f"cell override number {j + 1} (where {where or 'nothing'}) matches no cell of the grid")
    notes = []
    for k, solvers in dropped.items():
        flag = f"--{names[k]}" if k in names else k
        notes.append(
            f"{flag} does not apply to {', '.join(solvers)}: {'they' if len(solvers) > 1 else 'it'} ran once without it"
        )
    lists = {k: list(v) for k, v in axes.items()}
    cells = _ideal_prior_notes(_same_sampler_notes(cells, names))
    return Grid(cells=tuple(cells), axes=lists, not_applicable=tuple(notes))


def _ideal_prior_notes(cells: list[Cell]) -> list[Cell]:
    """Mark the cells that start from the ideal prior (--prior ideal:SOURCE): their samples copy the data."""
    from diffbench.priors import IDEAL, IDEAL_NOTE

    out = []
    for c in cells:
        if c.spec is not None and str(c.spec.prior or "").startswith(IDEAL):
            c = replace(c, note=IDEAL_NOTE if not c.note else f"{c.note}; {IDEAL_NOTE}")
        out.append(c)
    return out


def _same_sampler_notes(cells: list[Cell], names: Mapping[str, str]) -> list[Cell]:
    """Note the cells whose churn values differ but whose per-step gammas are equal: the same sampler, bit for
    bit (EDM Alg. 2 caps gamma_i = min(S_churn / N, sqrt2 - 1); S_min / S_max may leave no step churned)."""
    from diffbench.sampling.solvers.edm import MAX_GAMMA, churn_gammas

    groups: dict[tuple[Any, ...], list[int]] = {}
    gammas_of: dict[int, list[float]] = {}
    for i, c in enumerate(cells):
        if c.spec is None or c.plan is None or not any(k in c.options for k in CHURN_KEYS):
            continue
        info = get_solver(c.spec.solver)
        if "S_churn" not in info.options:
            continue
        opts = {**info.defaults(), **c.spec.solver_options()}
        g = churn_gammas(
            c.plan.sigmas,
            S_churn=float(opts.get("S_churn") or 0.0),
            S_min=float(opts.get("S_min") or 0.0),
            S_max=float(opts["S_max"]) if opts.get("S_max") is not None else float("inf"),
            churn_per_step=opts.get("churn_per_step"),
        )
        gammas_of[i] = g
        rest = repr(sorted((k, v) for k, v in c.options.items() if k not in CHURN_KEYS))
        key = (rest, tuple(float(s) for s in c.plan.sigmas), tuple(g))
        groups.setdefault(key, []).append(i)
    out = list(cells)
    for members in groups.values():
        if len(members) < 2:
            continue
        for i in members:
            others = [cells[j] for j in members if j != i]
            g = gammas_of[i]
            n = len(g)
            if any(abs(x - MAX_GAMMA) < 1e-15 for x in g):
                why = f"EDM caps each step's gamma = min(S_churn/N, sqrt2-1) at sqrt2-1 (N = {n} steps)"
            else:
                why = "every step gets the same gamma (S_min / S_max leave the same steps churned)"
            same = ", ".join(
                " ".join(f"{names.get(k, k)}={_show(o.options[k])}" for k in CHURN_KEYS if k in o.options) or o.config
                for o in others
            )
            out[i] = replace(cells[i], note=f"same sampler as {same}: {why}")
    return out


@dataclass(frozen=True)
class SweepConfig:
    """A sweep read from TOML: axes, fixed options, overrides, and the other settings (model, seeds, ...)."""

    axes: dict[str, list[Any]]
    fixed: dict[str, Any]
    overrides: list[dict[str, Any]]
    settings: dict[str, Any]


SETTINGS = ("model", "seeds", "metrics", "blocks", "ref", "extractor", "store", "out", "batch", "device", "class")


def load_config(path: str | os.PathLike, *, aliases: Mapping[str, str] | None = None) -> SweepConfig:
    """Read a sweep TOML file.

    Layout: top-level settings (model, seeds, metrics, blocks, ref, ...); [axes] (option = [values]);
    [fixed] (option = value); [[cell]] tables with `where = {..}` and `set = {..}`. Option keys are spec
    keywords (S_churn) or, through `aliases`, flag names (churn). Errors are one line naming the file.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such sweep config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    aliases = dict(aliases or {})
    fields = set(SamplerSpec.__dataclass_fields__)

    def key(k: str, where: str) -> str:
        k2 = aliases.get(k, aliases.get(k.replace("_", "-"), k))
        if k2 not in fields:
            raise UnknownNameError(f"sampler option in {p} [{where}]", k, sorted(fields | set(aliases)))
        return k2

    def table(obj: Any, where: str) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise ConfigError(f"{p}: [{where}] must be a table")
        return {key(k, where): v for k, v in obj.items()}

    def interval(v: Any, where: str) -> Any:
        """guidance_interval = [LO, HI] (two numbers) is one interval, "LO,HI" as the flag takes it."""
        from diffbench.sampling.guidance import parse_interval

        if isinstance(v, list) and len(v) == 2 and all(_number(x) for x in v):
            v = ",".join(_show(float(x)) for x in v)
        if not isinstance(v, str):
            raise ConfigError(
                f'{p}: [{where}] guidance_interval {v!r} is not LO,HI: write [LO, HI] or "LO,HI" '
                '(an axis of several: ["LO:HI", ...] or [[LO, HI], ...])'
            )
        try:
            parse_interval(v)
        except ConfigError as exc:
            raise ConfigError(f"{p}: [{where}] {exc}") from None
        return v

    def intervals(opts: dict[str, Any], where: str) -> dict[str, Any]:
        if "guidance_interval" in opts:
            opts["guidance_interval"] = interval(opts["guidance_interval"], where)
        return opts

    axes = {}
    for k, v in table(data.get("axes", {}), "axes").items():
        if k == "guidance_interval":  # [LO, HI] is one interval; a list of intervals: ["LO:HI", ...] or [[LO, HI]]
            one = not isinstance(v, list) or (len(v) == 2 and all(_number(x) for x in v))
            axes[k] = [interval(v, "axes")] if one else [interval(x, "axes") for x in v]
            continue
        axes[k] = list(v) if isinstance(v, list) else [v]
    fixed = intervals(table(data.get("fixed", {}), "fixed"), "fixed")
    overrides = []
    cells = data.get("cell", [])
    if not isinstance(cells, list):
        raise ConfigError(f"{p}: cell overrides are [[cell]] tables")
    for i, c in enumerate(cells):
        if not isinstance(c, dict) or set(c) - {"where", "set"} or "set" not in c:
            raise ConfigError(f"{p}: [[cell]] number {i + 1} needs `set = {{...}}` and optionally `where = {{...}}`")
        overrides.append(
            {
                "where": intervals(table(c.get("where", {}), "cell.where"), "cell.where"),
                "set": intervals(table(c["set"], "cell.set"), "cell.set"),
            }
        )
    unknown = set(data) - {"axes", "fixed", "cell", "recipe", *SETTINGS}  # recipe: diffbench/recipes
    if unknown:
        raise UnknownNameError(f"setting in {p}", sorted(unknown)[0], [*SETTINGS, "axes", "fixed", "cell"])
    settings = {k: data[k] for k in SETTINGS if k in data}
    return SweepConfig(axes=axes, fixed=fixed, overrides=overrides, settings=settings)


def check_grid(grid: Grid) -> None:
    """An empty grid after skipping is one clear error naming why the cells were skipped."""
    if not grid.runnable:
        reasons = sorted({c.skipped or "" for c in grid.skipped})
        more = f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else ""
        raise ConfigError(f"every cell of the grid was skipped: {reasons[0]}{more}")


def check_cells(
    grid: Grid,
    model: Any,
    *,
    seeds: Sequence[int],
    device: Any,
    names: Mapping[str, str] | None = None,
) -> None:
    """What a cell's sampler (sampling.run.Sampler) refuses when it starts, checked for every runnable cell
    before a store or an output is created, with the Sampler's own functions (so the same line): a --prior
    that cannot be read, is of another sample shape or at another sigma than the plan starts at (start_prior);
    --tf32 off CUDA and a --net-dtype the device cannot run (sampling.precision); `seeds` that a tuned grid
    (a `file:` schedule) was calibrated on (check_not_calibration). When only some cells fail, the error names
    the first of them by its axis values (and how many fail); when every cell fails, it is the line alone.

    Raises ConfigError (exit 2) for usage errors, DiffbenchError otherwise."""
    import torch

    from diffbench.denoiser import sample_shape
    from diffbench.errors import DiffbenchError, UsageError
    from diffbench.sampling.precision import check_net_dtype, check_tf32
    from diffbench.sampling.run import calibration_seeds, check_not_calibration, start_prior

    names = names or {}
    dev = torch.device(device)
    shape = sample_shape(model)
    seed_set = list(seeds)
    passed: set[Any] = set()
    failed: list[tuple[Cell, DiffbenchError]] = []
    for cell in grid.runnable:
        spec, p = cell.spec, cell.plan
        assert spec is not None and p is not None
        checks: list[tuple[Any, Any]] = [(("tf32", bool(spec.tf32)), partial(check_tf32, dev, bool(spec.tf32)))]
        if spec.net_dtype is not None:
            checks.append((("net_dtype", spec.net_dtype), partial(check_net_dtype, str(spec.net_dtype), dev)))
        calib = partial(check_not_calibration, calibration_seeds(spec.schedule), seed_set, spec.schedule)
        checks.append((("schedule", spec.schedule), calib))
        if spec.prior is not None:
            checks.append((("prior", spec.prior, p.sigma_first), partial(start_prior, spec, p, shape)))
        for key, check in checks:
            if key in passed:
                continue
            try:
                check()
            except DiffbenchError as exc:
                failed.append((cell, exc))
                break
            passed.add(key)
    if not failed:
        return
    bad, error = failed[0]
    if len(failed) == len(grid.runnable):
        raise error
    where = ", ".join(
        f"{names.get(k, k)} {_show(bad.options[k])}" for k, v in grid.axes.items() if len(v) > 1 and k in bad.options
    )
    more = f" ({len(failed)} of the grid's {len(grid.runnable)} cells are refused)" if len(failed) > 1 else ""
    cls = ConfigError if isinstance(error, UsageError) else DiffbenchError
    raise cls(f"{where or bad.config}: {error}{more}") from None


__all__ = [
    "Cell",
    "Grid",
    "SweepConfig",
    "make_grid",
    "load_config",
    "check_grid",
    "check_cells",
    "plan_spec",
    "config_label",
]
