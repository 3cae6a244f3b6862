"""Whole sigma grids, every interior point, against formulas written out here (REFERENCE §1) and diffusers.

The formulas below are computed independently of diffbench.sampling.schedules (numpy / exact fractions),
so a grid warped between its endpoints, an ignored option or a floored index shows up.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from diffbench.sampling import schedules as S
from diffbench.sampling.plan import plan

NS = (2, 3, 5, 8, 13, 18)
RANGES = ((0.002, 80.0), (0.05, 12.0), (0.3, 1.7))


def assert_grid(got: torch.Tensor, want, rtol: float = 1e-12) -> None:
    got = got.numpy()
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=rtol, atol=0)


def ramp(n: int) -> np.ndarray:
    """i / (N - 1), i = 0..N-1 (a lone point sits at sigma_max)."""
    return np.arange(n) / max(n - 1, 1)


# --- the formulas of REFERENCE §1, written out --------------------------------------------------------------


def edm_formula(n, lo, hi, rho):
    # EDM Eq. 5
    return (hi ** (1 / rho) + ramp(n) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


def vp_formula(n, lo, hi, eps_s=1e-3):
    # EDM Table 1 / App. D.1: beta_d, beta_min fitted to the range, t uniform from 1 to eps_s
    beta_d = 2 * (np.log(lo**2 + 1) / eps_s - np.log(hi**2 + 1)) / (eps_s - 1)
    beta_min = np.log(hi**2 + 1) - 0.5 * beta_d
    t = np.linspace(1.0, eps_s, n) if n > 1 else np.array([1.0])
    return np.sqrt(np.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)


def ve_formula(n, lo, hi):
    # Song et al. 2021: sigma^2 geometric from hi^2 to lo^2
    return np.sqrt(np.exp(np.log(hi**2) + ramp(n) * (np.log(lo**2) - np.log(hi**2))))


@functools.cache
def iddpm_u_formula(M=1000, C_1=0.001, C_2=0.008):
    # EDM App. C.3.4, one Python float at a time
    abar = [math.sin(0.5 * math.pi * j / (M * (C_2 + 1))) ** 2 for j in range(M + 1)]
    u = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(abar[j - 1] / abar[j], C_1) - 1)
    return np.array(u)


def round_half_even(q: Fraction) -> int:
    return round(q)  # Python rounds a Fraction half to even, as torch.round does


def iddpm_indices(length: int, n: int) -> list[int]:
    # EDM Table 1: indices round((len - 1) i / (N - 1)), exactly
    return [round_half_even(Fraction((length - 1) * i, max(n - 1, 1))) for i in range(n)]


def vp_t(sigma, beta_d=19.9, beta_min=0.1):
    return (math.sqrt(beta_min**2 + 2 * beta_d * math.log(1 + sigma**2)) - beta_min) / beta_d


def time_formula(n, lo, hi, rho):
    # DPM-Solver App. D.1: uniform in t^(1/rho) of the VP SDE (beta_d 19.9, beta_min 0.1)
    a, b = vp_t(hi) ** (1 / rho), vp_t(lo) ** (1 / rho)
    t = (a + ramp(n) * (b - a)) ** rho
    return np.sqrt(np.expm1(0.5 * 19.9 * t**2 + 0.1 * t))


# --- the tests -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rho", (1.0, 2.5, 3.0, 7.0, 12.0))
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("lo,hi", RANGES)
def test_edm_grid_every_point(rho, n, lo, hi):
    assert_grid(S.edm_grid(n, lo, hi, rho=rho), edm_formula(n, lo, hi, rho))


def test_edm_rho_changes_the_interior():
    """rho moves every interior point (so an ignored rho cannot pass the endpoint checks)."""
    a, b = S.edm_grid(10, 0.002, 80.0, rho=3.0), S.edm_grid(10, 0.002, 80.0, rho=7.0)
    assert torch.isclose(a[0], b[0], rtol=1e-12) and torch.isclose(a[-1], b[-1], rtol=1e-12)
    assert ((a[1:-1] - b[1:-1]).abs() > 1e-3).all()


@pytest.mark.parametrize("n", (5, 10, 18, 40))
def test_edm_rho7_equals_diffusers_karras(n):
    diffusers = pytest.importorskip("diffusers")
    want = diffusers.EulerDiscreteScheduler()._convert_to_karras(torch.tensor([80.0, 0.002], dtype=torch.float64), n)
    assert_grid(S.edm_grid(n, 0.002, 80.0), want)


@pytest.mark.parametrize("n", NS)
def test_log_linear_and_logsnr_equal_diffusers_exponential(n):
    diffusers = pytest.importorskip("diffusers")
    want = diffusers.EulerDiscreteScheduler()._convert_to_exponential(
        torch.tensor([80.0, 0.002], dtype=torch.float64), n
    )
    assert_grid(S.log_linear_grid(n, 0.002, 80.0), want)
    assert_grid(S.logsnr_grid(n, 0.002, 80.0), want)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("lo,hi", [*RANGES, (0.010486, 152.17)])
def test_vp_grid_every_point(n, lo, hi):
    assert_grid(S.vp_grid(n, lo, hi), vp_formula(n, lo, hi), rtol=1e-10)


def test_vp_epsilon_s_is_honoured():
    assert_grid(S.vp_grid(9, 0.01, 50.0, epsilon_s=0.01), vp_formula(9, 0.01, 50.0, eps_s=0.01), rtol=1e-10)


def test_vp_default_range_is_song_sde_at_eps_and_1():
    lo, hi = S.SCHEDULES["vp"].default_range
    assert math.isclose(lo, math.sqrt(math.expm1(0.5 * 19.9e-6 + 0.1e-3)), rel_tol=1e-12)
    assert math.isclose(hi, math.sqrt(math.expm1(0.5 * 19.9 + 0.1)), rel_tol=1e-12)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("lo,hi", [*RANGES, (0.02, 100.0)])
def test_ve_grid_every_point(n, lo, hi):
    assert_grid(S.ve_grid(n, lo, hi), ve_formula(n, lo, hi), rtol=1e-12)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("lo,hi", [*RANGES, (0.002, 81.0)])
def test_linear_grid_every_point(n, lo, hi):
    assert_grid(S.linear_grid(n, lo, hi), np.linspace(hi, lo, n) if n > 1 else [hi], rtol=1e-10)


def test_iddpm_u_table_every_entry():
    assert_grid(S.iddpm_u(), iddpm_u_formula(), rtol=1e-12)
    assert_grid(S.iddpm_u(200, 0.002, 0.01), iddpm_u_formula(200, 0.002, 0.01), rtol=1e-12)


@pytest.mark.parametrize("n", (2, 3, 4, 7, 18, 32, 64, 256))
@pytest.mark.parametrize("lo,hi", [(0.002, 81.0), (0.05, 10.0)])
def test_iddpm_grid_rounded_indices(n, lo, hi):
    u = iddpm_u_formula()
    inside = u[(u >= lo) & (u <= hi)]
    assert_grid(S.iddpm_grid(n, lo, hi), inside[iddpm_indices(len(inside), n)], rtol=1e-12)


def test_iddpm_rounding_differs_from_flooring_in_the_cases_tested():
    """The cases above include budgets where rounding and flooring pick different u's."""
    u = iddpm_u_formula()
    inside = u[(u >= 0.002) & (u <= 81.0)]
    for n in (18, 32, 64):
        floors = [((len(inside) - 1) * i) // (n - 1) for i in range(n)]
        assert floors != iddpm_indices(len(inside), n)


def test_iddpm_options_are_honoured():
    u = iddpm_u_formula(500, 0.002, 0.02)
    inside = u[(u >= 0.01) & (u <= 50.0)]
    got = S.iddpm_grid(12, 0.01, 50.0, M=500, C_1=0.002, C_2=0.02)
    assert_grid(got, inside[iddpm_indices(len(inside), 12)])


@pytest.mark.parametrize("rho", (1.0, 2.0, 3.0))
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("lo,hi", RANGES)
def test_time_uniform_grids_every_point(rho, n, lo, hi):
    assert_grid(S.time_uniform_grid(n, lo, hi, rho=rho), time_formula(n, lo, hi, rho), rtol=1e-10)


@pytest.mark.parametrize("n", NS)
def test_time_quadratic_is_rho_2(n):
    assert_grid(S.time_quadratic_grid(n, 0.002, 80.0), time_formula(n, 0.002, 80.0, 2.0), rtol=1e-10)


class Continuous:
    """A network stand-in with a wide continuous range and identity round_sigma."""

    sigma_min, sigma_max = 0.0, math.inf
    img_channels, img_resolution, label_dim = 1, 1, 0

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


@pytest.mark.parametrize(
    "schedule,options,formula",
    [
        ("edm", {}, lambda n: edm_formula(n, 0.002, 80.0, 7.0)),
        ("edm", {"rho": 3.0}, lambda n: edm_formula(n, 0.002, 80.0, 3.0)),
        ("vp", {}, lambda n: vp_formula(n, *S.SCHEDULES["vp"].default_range)),
        ("vp", {"epsilon_s": 0.01}, lambda n: vp_formula(n, *S.SCHEDULES["vp"].default_range, eps_s=0.01)),
        ("ve", {}, lambda n: ve_formula(n, 0.02, 100.0)),
        ("linear", {}, lambda n: np.linspace(80.0, 0.002, n)),
        ("log-linear", {}, lambda n: np.geomspace(80.0, 0.002, n)),
        ("logsnr", {}, lambda n: np.geomspace(80.0, 0.002, n)),
        ("time-uniform", {}, lambda n: time_formula(n, 0.002, 80.0, 1.0)),
        ("time-uniform", {"rho": 3.0}, lambda n: time_formula(n, 0.002, 80.0, 3.0)),
        ("time-quadratic", {}, lambda n: time_formula(n, 0.002, 80.0, 2.0)),
    ],
)
@pytest.mark.parametrize("endpoint", ("edm", "sigma_min"))
def test_planner_passes_range_and_options_through(schedule, options, formula, endpoint):
    """The planner's grid = the formula at the schedule's default range, with the endpoint rule applied."""
    p = plan(Continuous(), solver="euler", schedule=schedule, steps=9, endpoint=endpoint, schedule_options=options)
    n_points = 9 if endpoint == "edm" else 10
    want = formula(n_points)
    if endpoint == "edm":
        want = np.append(want, 0.0)
    assert_grid(p.sigmas, want, rtol=1e-10)


@pytest.mark.parametrize("suffix", (".npy", ".txt", ".csv2d"))
def test_file_grid_reads_every_value_from_text_and_npy(tmp_path, suffix):
    want = np.array([14.5, 3.25, 0.75, 0.03125])
    path = tmp_path / f"grid{suffix}"
    if suffix == ".npy":
        np.save(path, want.reshape(2, 2))  # any shape: the values in order
    elif suffix == ".txt":
        path.write_text("\n".join(str(float(v)) for v in [*want, 0.0]))  # a final 0 is dropped
    else:
        path.write_text("14.5 3.25\n0.75 0.03125\n")
    assert_grid(S.file_grid(path), want, rtol=0)


@pytest.mark.parametrize(
    "values,message",
    [
        ([], "empty or not finite"),
        ([3.0, float("nan"), 1.0], "empty or not finite"),
        ([3.0, 2.0, 2.0, 1.0], "strictly descending"),
        ([3.0, 4.0], "strictly descending"),
        ([3.0, 0.0, 0.0], "strictly descending"),
        ([3.0, -1.0], "strictly descending"),
    ],
)
def test_file_grid_refuses_bad_grids(tmp_path, values, message):
    from diffbench.errors import ConfigError

    path = tmp_path / "grid.txt"
    path.write_text("\n".join(map(repr, values)))
    with pytest.raises(ConfigError, match=message):
        S.file_grid(path)


def test_file_grid_unreadable_names_the_file(tmp_path):
    from diffbench.errors import ConfigError

    (tmp_path / "g.txt").write_text("80 forty\n")
    with pytest.raises(ConfigError, match=r"cannot read sigma grid from .*g\.txt"):
        S.file_grid(tmp_path / "g.txt")


def test_a_duplicate_schedule_is_refused_and_the_registry_kept():
    before = dict(S.SCHEDULES)
    with pytest.raises(ValueError, match="schedule 'edm' is already registered"):
        S.register_schedule(S.ScheduleInfo("edm", S.linear_grid, (1.0, 2.0), "x"))
    assert S.SCHEDULES == before
    info = S.register_schedule(S.ScheduleInfo("test-only-grid", S.linear_grid, (1.0, 2.0), "x"))
    try:
        assert S.get_schedule("test-only-grid") is info
    finally:
        del S.SCHEDULES["test-only-grid"]
