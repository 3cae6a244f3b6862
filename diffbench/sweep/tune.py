"""Schedule tuning for one model, solver and budget: GITS (Chen et al. 2024) or the best rho of EDM's family.

`tune_schedule` returns a `TunedGrid` (the positive sigmas, descending, and a record of how they were made);
`write_grid` saves it as a .json grid file that `--schedule file:grid.json` reads in sample, fid and sweep.

Step count and NFE: the grid must let the solver spend exactly the budget. With endpoint 'edm' a plan of
`steps` steps holds `steps` positive sigmas and a final step to 0 (x = D(x; sigma_min), one evaluation); with
endpoint 'sigma_min' it holds steps + 1 positive sigmas and ends at sigma_min. So for iPNDM (1 evaluation a
step) NFE K is K positive sigmas under 'edm' (K - 1 tuned intervals) and K + 1 under 'sigma_min' (K
intervals, Chen et al.'s convention); for Heun (2 a step, 1 on the step to 0) NFE 2S - 1 under 'edm'.
The tuned intervals run from sigma_max to sigma_min of the model's range, both fixed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffbench.denoiser import Denoiser
from diffbench.errors import ConfigError, NotApplicableError
from diffbench.provenance import compact_seeds
from diffbench.sampling.gits import COSTS, FINE_POINTS, GITS_COEFF, cost_matrix, gits_path
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.plan import resolve_steps, sigma_range
from diffbench.sampling.run import Sampler
from diffbench.sampling.schedules import EDM_RANGE, GRID_FORMAT, edm_grid
from diffbench.sampling.solvers import get_solver
from diffbench.sampling.spec import SamplerSpec

METHODS = ("gits", "rho")
TEACHER = "ipndm"  # the teacher solver (Chen et al. 2024: iPNDM, order 4)
TEACHER_ORDER = 4
RHO_SCAN = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 14.0, 20.0)  # the coarse scan of --method rho
RHO_REFINE = 8  # golden-section iterations between the scan neighbours of the best scan point
GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass
class TunedGrid:
    """A tuned grid: positive sigmas (descending, sigma_max first, no final 0) and how they were made."""

    sigmas: list[float]
    record: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The .json grid file's content: format, sigmas, then the record."""
        return {"format": GRID_FORMAT, "version": 1, "sigmas": list(self.sigmas), **self.record}


def write_grid(grid: TunedGrid, path: str | Path) -> Path:
    """Write a tuned grid as JSON (atomically: a temporary file renamed into place)."""
    import json
    import os

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(grid.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


_WARNED: set[tuple[str, str, str]] = set()  # (grid path, solver, model sha256) already warned about in this process


def tuned_grid_mismatch(model: Any, spec: SamplerSpec) -> str | None:
    """One warning line when `spec` samples on a `file:` grid that tune-schedule tuned for another solver or
    another model (its record's 'solver' and 'model_sha256'); None when it matches, or the grid has no record.
    Not an error: a grid may be reused on purpose, but its sigmas were fitted to that solver's and model's
    trajectories (Chen et al. 2024, Sec. 4)."""
    schedule = str(spec.schedule)
    if not schedule.startswith("file:") or not schedule.lower().endswith(".json"):
        return None
    from diffbench.sampling.schedules import grid_file_info
    from diffbench.sweep.bench import model_sha256

    path = schedule[5:]
    record = grid_file_info(path)
    wanted_sha, wanted_solver = record.get("model_sha256"), record.get("solver")
    if not wanted_sha and not wanted_solver:
        return None
    parts = []
    if wanted_solver and wanted_solver != spec.solver:
        parts.append(f"solver {wanted_solver} (this run: {spec.solver})")
    sha = model_sha256(model) if wanted_sha else ""
    if wanted_sha and wanted_sha != sha:
        name = f"{record['model']} " if record.get("model") else ""
        parts.append(f"model {name}(sha256 {str(wanted_sha)[:12]}…; this model's is {sha[:12]}…)")
    if not parts:
        return None
    return f"warning: the grid {path} was tuned for {' and '.join(parts)}; its sigmas may not suit this run"


def warn_tuned_grid(model: Any, spec: SamplerSpec) -> None:
    """Print tuned_grid_mismatch's line on stderr, once per grid, solver and model in this process."""
    import sys

    line = tuned_grid_mismatch(model, spec)
    if line is None:
        return
    key = (str(spec.schedule), str(spec.solver), line)
    if key not in _WARNED:
        _WARNED.add(key)
        print(line, file=sys.stderr, flush=True)


def grid_points(solver: str, nfe: int, *, endpoint: str, solver_options: dict[str, Any] | None = None) -> int:
    """Positive sigmas a grid needs for `solver` to spend exactly `nfe` (module docstring). Raises
    BudgetError for a budget the solver cannot hit, NotApplicableError for a stochastic solver."""
    info = get_solver(solver)
    if info.stochastic:
        raise NotApplicableError(
            f"tune-schedule tunes an ODE sampler; solver '{solver}' is stochastic (choose a deterministic one)"
        )
    steps = resolve_steps(
        info, nfe=nfe, steps=None, endpoint=endpoint, denoise_to_zero=False, policy="exact", options=solver_options
    )
    return steps if endpoint == "edm" else steps + 1


def check_disjoint(calib_seeds: Sequence[int], eval_seeds: Sequence[int] | None) -> None:
    """Calibration seeds are never evaluation seeds: ConfigError naming the overlap."""
    if eval_seeds:
        both = sorted(set(calib_seeds).intersection(eval_seeds))
        if both:
            raise ConfigError(
                f"calibration seeds and evaluation seeds overlap ({compact_seeds(both)}); tune and evaluate on "
                "different seeds"
            )


def teacher_trajectory(
    model: Denoiser,
    *,
    seeds: Sequence[int],
    points: int,
    sigma_min: float,
    sigma_max: float,
    batch: int = 256,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's trajectory on `points` sigmas of EDM's rho = 7 grid (Eq. 5), iPNDM order 4, ending at
    sigma_min (no step to 0): (sigmas [N] float64, states [N, B, C, H, W], directions [N-1, B, C, H, W]
    with d_i = (x_i - D(x_i; sigma_i)) / sigma_i, EDM Eq. 3). Costs points - 1 NFE per seed."""
    spec = SamplerSpec.make(
        solver=TEACHER,
        order=TEACHER_ORDER,
        schedule="edm",
        rho=7.0,
        steps=points - 1,
        endpoint="sigma_min",
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        dtype="float64",
    )
    run = Sampler(model, spec, device=device)
    sig = run.plan.sigmas
    xs_all, ds_all = [], []
    for a in range(0, len(seeds), batch):
        chunk = list(seeds[a : a + batch])
        z = NoiseSource(chunk, device=run.device).latents(run.shape).to(torch.float64)
        states = [(z * sig[0]).cpu()]
        dirs: list[torch.Tensor] = []

        def keep(info: Any, states: list = states, dirs: list = dirs) -> None:
            prev = states[-1].to(info.x.device)
            dirs.append(((prev - info.denoised) / info.sigma).cpu())
            states.append(info.x.detach().cpu())

        run.run(chunk, latents=z, on_step=keep)
        xs_all.append(torch.stack(states))
        ds_all.append(torch.stack(dirs))
    return sig, torch.cat(xs_all, dim=1), torch.cat(ds_all, dim=1)


def tune_schedule(
    model: Denoiser,
    *,
    solver: str,
    nfe: int,
    calib_seeds: Sequence[int],
    method: str = "gits",
    endpoint: str = "edm",
    solver_options: dict[str, Any] | None = None,
    cost: str = "dev",
    coeff: float = GITS_COEFF,
    teacher_points: int = FINE_POINTS,
    ref_steps: int = 1024,
    batch: int = 256,
    device: str | torch.device = "cpu",
    eval_seeds: Sequence[int] | None = None,
) -> TunedGrid:
    """A sigma grid tuned for `solver` at exactly `nfe` on `model` (module docstring for steps vs NFE).

    method 'gits': Chen et al. 2024 (teacher iPNDM-4 on `teacher_points` of EDM's rho = 7 grid, one-Euler-step
    cost matrix `cost` in dev|l2 over the calibration seeds, DP with `coeff`); method 'rho': the rho of EDM's
    grid (Eq. 5) with the least reference-solution error on the calibration seeds: a scan of RHO_SCAN, then
    RHO_REFINE golden-section steps between the best scan point's neighbours (bracket [1, 20]).
    Errors (one line each): an unknown method or cost, a stochastic solver, an unreachable budget, calibration
    seeds overlapping `eval_seeds`, too few teacher points for the budget.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown tuning method '{method}' (choose from {', '.join(METHODS)})")
    if cost not in COSTS:
        raise ConfigError(f"unknown GITS cost '{cost}' (choose from {', '.join(COSTS)})")
    if endpoint not in ("edm", "sigma_min"):
        raise ConfigError(f"endpoint must be 'edm' or 'sigma_min' for a tuned grid, got '{endpoint}'")
    if not calib_seeds:
        raise ConfigError("no calibration seeds given")
    check_disjoint(calib_seeds, eval_seeds)
    n_points = grid_points(solver, nfe, endpoint=endpoint, solver_options=solver_options)
    if n_points < 2:
        raise ConfigError(f"{solver} at NFE {nfe} runs on a single sigma; there is no grid to tune")
    lo, hi = sigma_range(model, EDM_RANGE, None, None)
    from diffbench.sweep.bench import model_sha256

    record: dict[str, Any] = {
        "method": method,
        "model_sha256": model_sha256(model),
        "solver": solver,
        "solver_options": dict(solver_options or {}),
        "nfe": nfe,
        "endpoint": endpoint,
        "points": n_points,
        "sigma_min": lo,
        "sigma_max": hi,
        "calibration_seeds": compact_seeds(list(calib_seeds)),
        "calibration_n": len(calib_seeds),
    }
    if method == "gits":
        if n_points > teacher_points:
            raise ConfigError(
                f"{solver} at NFE {nfe} needs {n_points} sigmas, more than the {teacher_points} teacher points; "
                "raise --teacher-points"
            )
        fine, xs, ds = teacher_trajectory(
            model, seeds=calib_seeds, points=teacher_points, sigma_min=lo, sigma_max=hi, batch=batch, device=device
        )
        c = cost_matrix(xs, ds, fine, cost=cost)
        path, total = gits_path(c, n_points - 1, coeff=coeff)
        sigmas = [float(fine[i]) for i in path]
        record.update(
            teacher={
                "solver": TEACHER,
                "order": TEACHER_ORDER,
                "schedule": "edm",
                "rho": 7.0,
                "points": teacher_points,
            },
            cost=cost,
            coeff=coeff,
            path=path,
            path_cost=total,
            calibration_nfe_per_seed=teacher_points - 1,
            calibration_nfe=(teacher_points - 1) * len(calib_seeds),
            source="Chen et al. 2024 (ICML), On the Trajectory Regularity of ODE-based Diffusion Sampling, Sec. 4",
        )
    else:
        sigmas, extra = _best_rho(
            model,
            solver=solver,
            nfe=nfe,
            n_points=n_points,
            seeds=calib_seeds,
            endpoint=endpoint,
            solver_options=solver_options,
            lo=lo,
            hi=hi,
            ref_steps=ref_steps,
            batch=batch,
            device=device,
        )
        record.update(extra)
    return TunedGrid(sigmas=sigmas, record=record)


def _spec(solver: str, nfe: int, endpoint: str, options: dict[str, Any] | None, **grid: Any) -> SamplerSpec:
    return SamplerSpec.make(solver=solver, nfe=nfe, endpoint=endpoint, **(options or {}), **grid)


def _best_rho(
    model: Denoiser,
    *,
    solver: str,
    nfe: int,
    n_points: int,
    seeds: Sequence[int],
    endpoint: str,
    solver_options: dict[str, Any] | None,
    lo: float,
    hi: float,
    ref_steps: int,
    batch: int,
    device: str | torch.device,
) -> tuple[list[float], dict[str, Any]]:
    """The rho of EDM's grid with the least ref-error on `seeds`: scan, then golden section (tune_schedule)."""
    from diffbench.sweep.single_cell import reference_error

    tried: dict[float, float] = {}

    def err(rho: float) -> float:
        if rho not in tried:
            spec = _spec(solver, nfe, endpoint, solver_options, schedule="edm", rho=rho, sigma_min=lo, sigma_max=hi)
            r = reference_error(model, spec=spec, seeds=seeds, batch=batch, device=device, ref_steps=ref_steps)
            tried[rho] = r.rms
        return tried[rho]

    scores = [err(r) for r in RHO_SCAN]
    k = min(range(len(RHO_SCAN)), key=lambda i: scores[i])
    a, b = RHO_SCAN[max(k - 1, 0)], RHO_SCAN[min(k + 1, len(RHO_SCAN) - 1)]
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    for _ in range(RHO_REFINE):  # golden-section search on [a, b] (Kiefer 1953)
        if err(c) < err(d):
            b, d = d, c
            c = b - GOLDEN * (b - a)
        else:
            a, c = c, d
            d = a + GOLDEN * (b - a)
    best = min(tried, key=lambda r: tried[r])
    sigmas = [float(s) for s in edm_grid(n_points, lo, hi, rho=best)]
    ref_nfe = 2 * ref_steps - 1
    return sigmas, {
        "rho": best,
        "ref_error": tried[best],
        "rho_bracket": [RHO_SCAN[0], RHO_SCAN[-1]],
        "rho_tried": {f"{r:.6g}": tried[r] for r in sorted(tried)},
        "reference": f"heun {ref_steps} steps, rho 7 (ref-error)",
        "calibration_nfe_per_seed": nfe * len(tried) + ref_nfe,
        "calibration_nfe": (nfe * len(tried) + ref_nfe) * len(seeds),
        "source": "Karras et al. 2022, Eq. 5 (rho); 1-d search on reference-solution error",
    }


BASELINES: tuple[tuple[str, dict[str, Any]], ...] = (("edm", {"rho": 7.0}), ("ve", {}), ("vp", {}))


def evaluate_grid(
    model: Denoiser,
    path: str | Path,
    *,
    solver: str,
    nfe: int,
    seeds: Sequence[int],
    endpoint: str = "edm",
    solver_options: dict[str, Any] | None = None,
    ref_steps: int = 1024,
    batch: int = 256,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Reference-solution error (RMS) on held-out `seeds` of the grid file at `path` and of EDM's rho = 7, VE
    and VP grids on the same sigma range, same solver and NFE: {label: rms}."""
    from diffbench.sampling.schedules import file_grid
    from diffbench.sweep.single_cell import reference_error

    g = file_grid(path)
    lo, hi = float(g[-1]), float(g[0])
    out = {}
    specs = {"tuned": _spec(solver, nfe, endpoint, solver_options, schedule=f"file:{path}")}
    for name, opts in BASELINES:
        specs[name] = _spec(solver, nfe, endpoint, solver_options, schedule=name, sigma_min=lo, sigma_max=hi, **opts)
    for label, spec in specs.items():
        r = reference_error(model, spec=spec, seeds=seeds, batch=batch, device=device, ref_steps=ref_steps)
        out[label] = r.rms
    return out
