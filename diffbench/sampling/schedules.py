"""Noise schedules: pure functions returning descending float64 sigma grids, sigma_max first, no final zero.

The endpoint rule (append 0, or stop at sigma_min) is applied in one place: diffbench.sampling.plan.
Each grid function takes the number of points and the sigma range; the default range of each schedule
(REFERENCE §1) is in SCHEDULES[name].default_range and is clamped to the network's range by the planner.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffbench.errors import ConfigError, UnknownNameError

VP_EPSILON_S = 1e-3  # EDM ablation sampler: VP t runs from 1 to epsilon_s (EDM Appendix D.1)
SONG_BETA_D, SONG_BETA_MIN = 19.9, 0.1  # Song et al. 2021 VP SDE: beta(t) = 0.1 + 19.9 t (EDM Table 1)


def vp_beta_from_range(sigma_min: float, sigma_max: float, epsilon_s: float = VP_EPSILON_S) -> tuple[float, float]:
    """(beta_d, beta_min) whose VP sigma(t) spans [sigma_min, sigma_max] over t in [epsilon_s, 1] (EDM ablation)."""
    beta_d = 2 * (math.log(sigma_min**2 + 1) / epsilon_s - math.log(sigma_max**2 + 1)) / (epsilon_s - 1)
    beta_min = math.log(sigma_max**2 + 1) - 0.5 * beta_d
    return beta_d, beta_min


def vp_sigma(t, beta_d: float, beta_min: float):
    """sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1) (EDM Table 1, VP)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return ((0.5 * beta_d * t**2 + beta_min * t).exp() - 1).sqrt()


def vp_time(sigma, beta_d: float = SONG_BETA_D, beta_min: float = SONG_BETA_MIN):
    """t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(1 + sigma^2)) - beta_min) / beta_d, the inverse of vp_sigma
    (EDM Table 1); a float or a numpy array of sigmas."""
    return (np.sqrt(beta_min**2 + 2 * beta_d * np.log1p(np.square(sigma))) - beta_min) / beta_d


def _vp_default_range() -> tuple[float, float]:
    """sigma(t) of the Song et al. 2021 VP SDE at t = epsilon_s and t = 1."""
    return (
        float(vp_sigma(VP_EPSILON_S, SONG_BETA_D, SONG_BETA_MIN)),
        float(vp_sigma(1.0, SONG_BETA_D, SONG_BETA_MIN)),
    )


def _steps(n: int) -> torch.Tensor:
    """i/(n-1) for i = 0..n-1 (a single point sits at the start)."""
    return torch.arange(n, dtype=torch.float64) / max(n - 1, 1)


def edm_grid(n: int, sigma_min: float, sigma_max: float, *, rho: float = 7.0) -> torch.Tensor:
    """sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho (EDM Eq. 5)."""
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (a + _steps(n) * (b - a)) ** rho


def vp_grid(n: int, sigma_min: float, sigma_max: float, *, epsilon_s: float = VP_EPSILON_S) -> torch.Tensor:
    """t_i uniform from 1 to epsilon_s, sigma = sigma_vp(t_i) (Song et al. 2021; EDM Table 1 'VP')."""
    beta_d, beta_min = vp_beta_from_range(sigma_min, sigma_max, epsilon_s)
    t = 1 + _steps(n) * (epsilon_s - 1)
    return vp_sigma(t, beta_d, beta_min)


def ve_grid(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Geometric in sigma^2 from sigma_max^2 to sigma_min^2 (Song et al. 2021; EDM Table 1 'VE')."""
    t = sigma_max**2 * (sigma_min**2 / sigma_max**2) ** _steps(n)
    return t.sqrt()


def iddpm_u(M: int = 1000, C_1: float = 0.001, C_2: float = 0.008) -> torch.Tensor:
    """u_M = 0, u_{j-1} = sqrt((u_j^2+1)/max(abar_{j-1}/abar_j, C_1) - 1), float64 (EDM Appendix C.3.4)."""
    j = torch.arange(M + 1, dtype=torch.float64)
    abar = torch.sin(0.5 * math.pi * j / (M * (C_2 + 1))) ** 2
    u = torch.zeros(M + 1, dtype=torch.float64)
    for k in range(M, 0, -1):
        u[k - 1] = ((u[k] ** 2 + 1) / (abar[k - 1] / abar[k]).clip(min=C_1) - 1).sqrt()
    return u


def iddpm_grid(
    n: int, sigma_min: float, sigma_max: float, *, M: int = 1000, C_1: float = 0.001, C_2: float = 0.008
) -> torch.Tensor:
    """N of the u_j inside [sigma_min, sigma_max] at indices round((len-1) i/(N-1)) (EDM Table 1 'iDDPM')."""
    u = iddpm_u(M, C_1, C_2)
    inside = u[(u >= sigma_min) & (u <= sigma_max)]
    if len(inside) < n:
        raise ConfigError(
            f"the iddpm schedule has only {len(inside)} levels in [{sigma_min}, {sigma_max}]; {n} points were asked for"
        )
    idx = ((len(inside) - 1) * _steps(n)).round().to(torch.int64)
    return inside[idx]


def linear_grid(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in sigma."""
    return sigma_max + _steps(n) * (sigma_min - sigma_max)


def log_linear_grid(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in log sigma."""
    return torch.exp(math.log(sigma_max) + _steps(n) * (math.log(sigma_min) - math.log(sigma_max)))


def logsnr_grid(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in logSNR = -2 log sigma (Lu et al. 2022, DPM-Solver Sec. 3.3); the same points as log-linear."""
    lam = -2 * math.log(sigma_max) + _steps(n) * (2 * math.log(sigma_max) - 2 * math.log(sigma_min))
    return torch.exp(-lam / 2)


def time_uniform_grid(n: int, sigma_min: float, sigma_max: float, *, rho: float = 1.0) -> torch.Tensor:
    """Uniform in t^(1/rho), t the VP SDE time (beta_d 19.9, beta_min 0.1); rho = 1 is DPM-Solver's
    'time_uniform' (Lu et al. 2022, App. D.1), rho = 2 its 'time_quadratic'."""
    a, b = float(vp_time(sigma_max)) ** (1 / rho), float(vp_time(sigma_min)) ** (1 / rho)
    return vp_sigma((a + _steps(n) * (b - a)) ** rho, SONG_BETA_D, SONG_BETA_MIN)


def time_quadratic_grid(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in sqrt(t) of the VP SDE: DPM-Solver's 'time_quadratic' (Lu et al. 2022, App. D.1)."""
    return time_uniform_grid(n, sigma_min, sigma_max, rho=2.0)


FILE_MAX_SIGMA = 1e6  # = diffbench.sampling.plan.MAX_SIGMA


GRID_FORMAT = "diffbench-sigma-grid"  # the "format" of a .json grid file (diffbench tune-schedule writes one)


def grid_file_info(path: str | Path) -> dict:
    """The record of a .json grid file (how it was made: method, model sha256, solver, NFE, calibration seeds,
    ...; diffbench.sweep.tune), {} for a text or .npy grid. Raises ConfigError for an unreadable file."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        return {}
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot read sigma grid from {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("sigmas"), list):
        raise ConfigError(f"sigma grid {path}: a .json grid is an object with a list 'sigmas'")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in data["sigmas"]):
        raise ConfigError(f"sigma grid {path}: 'sigmas' must hold numbers only")
    return data


def file_grid(path: str | Path) -> torch.Tensor:
    """A grid read from a text, .npy or .json file (key 'sigmas'): descending positive sigmas, used as given."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            arr = np.asarray(grid_file_info(path)["sigmas"], dtype=np.float64)
        else:
            arr = np.load(path) if path.suffix == ".npy" else np.loadtxt(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read sigma grid from {path}: {exc}") from None
    sig = torch.as_tensor(np.asarray(arr, dtype=np.float64).reshape(-1))
    if sig.numel() == 0 or not torch.isfinite(sig).all():
        raise ConfigError(f"sigma grid {path} is empty or not finite")
    if sig[-1] == 0:
        sig = sig[:-1]
    if (sig <= 0).any() or (sig[1:] >= sig[:-1]).any():
        raise ConfigError(f"sigma grid {path} must be strictly descending positive sigmas (a final 0 is allowed)")
    if sig[0] > FILE_MAX_SIGMA:
        raise ConfigError(
            f"sigma grid {path} starts at {float(sig[0]):.6g}, above the largest sigma diffbench accepts "
            f"({FILE_MAX_SIGMA:g})"
        )
    return sig


@dataclass(frozen=True)
class ScheduleInfo:
    """One registry entry: the grid function, its default range, its own options and its source."""

    name: str
    fn: Callable[..., torch.Tensor]
    default_range: tuple[float, float]
    paper: str
    options: tuple[str, ...] = field(default=())


SCHEDULES: dict[str, ScheduleInfo] = {}


def register_schedule(info: ScheduleInfo) -> ScheduleInfo:
    """Add a schedule to the registry; a duplicate name is refused."""
    if info.name in SCHEDULES:
        raise ValueError(f"schedule '{info.name}' is already registered")
    SCHEDULES[info.name] = info
    return info


def get_schedule(name: str) -> ScheduleInfo:
    """Look a schedule up by name (file:PATH is handled by the planner)."""
    if name not in SCHEDULES:
        raise UnknownNameError("schedule", name, [*SCHEDULES, "file:PATH"])
    return SCHEDULES[name]


EDM_RANGE = (0.002, 80.0)
register_schedule(ScheduleInfo("edm", edm_grid, EDM_RANGE, "Karras et al. 2022, Eq. 5 (rho)", ("rho",)))
register_schedule(
    ScheduleInfo("vp", vp_grid, _vp_default_range(), "Song et al. 2021 (VP, uniform t); EDM Table 1", ("epsilon_s",))
)
register_schedule(ScheduleInfo("ve", ve_grid, (0.02, 100.0), "Song et al. 2021 (VE, geometric); EDM Table 1"))
register_schedule(
    ScheduleInfo("iddpm", iddpm_grid, (0.002, 81.0), "Nichol & Dhariwal 2021; EDM Table 1", ("M", "C_1", "C_2"))
)
register_schedule(ScheduleInfo("linear", linear_grid, EDM_RANGE, "uniform in sigma"))
register_schedule(ScheduleInfo("log-linear", log_linear_grid, EDM_RANGE, "uniform in log sigma"))
register_schedule(
    ScheduleInfo("logsnr", logsnr_grid, EDM_RANGE, "uniform logSNR, Lu et al. 2022 (DPM-Solver) Sec. 3.3")
)
register_schedule(
    ScheduleInfo(
        "time-uniform",
        time_uniform_grid,
        EDM_RANGE,
        "uniform VP time t (rho: in t^(1/rho)); Lu et al. 2022 App. D.1",
        ("rho",),
    )
)
register_schedule(
    ScheduleInfo("time-quadratic", time_quadratic_grid, EDM_RANGE, "uniform sqrt(VP time t); Lu et al. 2022 App. D.1")
)
