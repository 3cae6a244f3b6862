"""Sigma grids against REFERENCE §1 and the range rules of DESIGN.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffbench.errors import ConfigError, NotApplicableError, UnknownNameError
from diffbench.models.precond import IDDPMPrecond, VPPrecond
from diffbench.sampling.plan import plan
from diffbench.sampling.schedules import (
    SCHEDULES,
    edm_grid,
    get_schedule,
    iddpm_grid,
    log_linear_grid,
    logsnr_grid,
    ve_grid,
    vp_beta_from_range,
    vp_grid,
)

# REFERENCE §1: the 18-step EDM grid, as printed there
EDM_18 = [
    80,
    57.59,
    40.79,
    28.37,
    19.35,
    12.91,
    8.40,
    5.32,
    3.26,
    1.92,
    1.09,
    0.585,
    0.296,
    0.140,
    0.060,
    0.023,
    0.0075,
    0.002,
]


class Raw(torch.nn.Module):
    def forward(self, x, noise_labels, class_labels=None):
        return torch.cat([x, x], dim=1)


def test_edm_18_step_grid_matches_reference():
    grid = edm_grid(18, 0.002, 80.0)
    assert grid.tolist() == pytest.approx(EDM_18, rel=6e-3)  # the printed values carry 2-3 significant digits
    i = np.arange(18)
    exact = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7  # EDM Eq. 5, computed apart
    assert np.allclose(grid.numpy(), exact, rtol=1e-13)
    assert grid.dtype == torch.float64
    assert grid[0] == 80 and grid[-1] == pytest.approx(0.002, rel=1e-12)


def test_edm_plan_appends_zero_and_spends_35(gmm):
    p = plan(gmm, solver="heun", schedule="edm", nfe=35)
    assert p.steps == 18 and p.nfe == 35
    assert len(p.sigmas) == 19 and p.sigmas[-1] == 0
    assert torch.allclose(p.sigmas[:-1], edm_grid(18, 0.002, 80.0))


def test_vp_defaults_give_back_song_betas():
    lo, hi = SCHEDULES["vp"].default_range
    assert lo == pytest.approx(0.010486, rel=1e-4) and hi == pytest.approx(152.17, rel=1e-4)
    beta_d, beta_min = vp_beta_from_range(lo, hi)
    assert beta_d == pytest.approx(19.9, rel=1e-10) and beta_min == pytest.approx(0.1, rel=1e-9)
    grid = vp_grid(10, lo, hi)
    assert grid[0] == pytest.approx(hi, rel=1e-12) and grid[-1] == pytest.approx(lo, rel=1e-12)


def test_ve_grid_is_geometric_in_sigma_squared():
    grid = ve_grid(7, 0.02, 100.0)
    ratios = (grid[1:] ** 2 / grid[:-1] ** 2).numpy()
    assert np.allclose(ratios, ratios[0], rtol=1e-12)
    assert grid[0] == pytest.approx(100) and grid[-1] == pytest.approx(0.02)


def test_log_grids_are_uniform_in_log_sigma_and_agree():
    a, b = log_linear_grid(9, 0.002, 80.0), logsnr_grid(9, 0.002, 80.0)
    assert torch.allclose(a, b, rtol=1e-12)
    steps = torch.diff(a.log())
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-10)


def test_iddpm_grid_and_round_sigma():
    grid = iddpm_grid(10, 0.002, 81.0)
    assert grid[0] == pytest.approx(80.2036, abs=1e-3)  # REFERENCE §2: round_sigma(80) = 80.204
    net = IDDPMPrecond(Raw(), img_resolution=4, img_channels=3)
    assert float(net.round_sigma(torch.tensor(80.0, dtype=torch.float64))) == pytest.approx(80.204, abs=1e-3)
    assert net.sigma_min == pytest.approx(0.006422, rel=1e-3)
    assert net.sigma_max == pytest.approx(20291.17, rel=1e-5)


def test_default_range_is_clamped_to_the_network():
    net = VPPrecond(Raw(), img_resolution=4, img_channels=3)
    p = plan(net, solver="euler", schedule="edm", steps=10)
    assert p.sigma_max == 80.0 and p.sigma_min == 0.002
    p = plan(net, solver="euler", schedule="ve", steps=10)  # ve's default top (100) fits inside VP's 152
    assert p.sigma_max == 100.0
    iddpm = IDDPMPrecond(Raw(), img_resolution=4, img_channels=3)
    p = plan(iddpm, solver="euler", schedule="edm", steps=10)
    assert p.sigma_min == pytest.approx(iddpm.sigma_min)  # 0.002 clamped up to the u-table's bottom


def test_explicit_range_outside_the_network_is_an_error():
    net = VPPrecond(Raw(), img_resolution=4, img_channels=3)
    with pytest.raises(ConfigError, match="outside the model's sigma range"):
        plan(net, solver="euler", schedule="edm", steps=10, sigma_max=500.0)
    with pytest.raises(ConfigError, match="outside"):
        plan(net, solver="euler", schedule="edm", steps=10, sigma_min=1e-6)


def test_round_sigma_merges_steps_and_they_are_reported():
    net = IDDPMPrecond(Raw(), img_resolution=4, img_channels=3)
    p = plan(net, solver="euler", schedule="edm", steps=256)
    assert p.merged_steps > 0
    assert p.distinct_levels == len(torch.unique(p.sigmas))
    assert p.nfe == 256  # merged steps still cost their evaluations


def test_unknown_schedule_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'edm'"):
        get_schedule("edn")


def test_file_grid(tmp_path, gmm):
    path = tmp_path / "grid.txt"
    path.write_text("\n".join(str(s) for s in [10.0, 3.0, 1.0, 0.1, 0.0]))
    p = plan(gmm, solver="euler", schedule=f"file:{path}", steps=4)
    assert p.sigmas.tolist() == [10.0, 3.0, 1.0, 0.1, 0.0]
    # its sigmas are fixed: a range is refused like rho is, never silently ignored
    for kw, named in (({"sigma_max": 5.0}, "--sigma-max does"), ({"sigma_min": 0.2, "sigma_max": 5.0}, "and")):
        with pytest.raises(NotApplicableError, match=f"{named}.* not apply to a file grid.*fixed \\(10 .. 0.1"):
            plan(gmm, solver="euler", schedule=f"file:{path}", steps=4, **kw)
    path.write_text("1\n2\n")
    with pytest.raises(ConfigError, match="descending"):
        plan(gmm, solver="euler", schedule=f"file:{path}", steps=2)


def test_schedule_option_that_does_not_apply():
    from diffbench.models.analytic import load_builtin

    with pytest.raises(ConfigError, match="do not apply to schedule 've'"):
        plan(load_builtin("gmm"), solver="euler", schedule="ve", steps=5, schedule_options={"rho": 3})


@pytest.mark.parametrize("rho", [0.0, 1e-9, float("inf"), -1.0, float("nan")])
def test_rho_must_be_finite_and_positive(gmm, rho):
    from diffbench.sampling.spec import SamplerSpec

    if rho != 1e-9:  # finite and positive, but its grid overflows: refused when the grid is planned
        with pytest.raises(ConfigError, match="rho") as exc:
            SamplerSpec.make(solver="euler", steps=8, rho=rho)
        assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="rho"):
        plan(gmm, solver="euler", schedule="edm", steps=8, schedule_options={"rho": rho})


def test_absurd_schedule_file_is_one_line(tmp_path, gmm):
    path = tmp_path / "grid.txt"
    path.write_text("1e300\n10\n1\n0.1\n")
    with pytest.raises(ConfigError, match="above the largest sigma") as exc:
        plan(gmm, solver="euler", schedule=f"file:{path}", steps=3, endpoint="sigma_min")
    assert "\n" not in str(exc.value)


def test_empty_churn_window_is_refused():
    from diffbench.sampling.spec import SamplerSpec

    with pytest.raises(ConfigError, match="churn window"):
        SamplerSpec.make(solver="heun", S_churn=10, S_min=50, S_max=0.05)
    with pytest.raises(ConfigError, match="churn window"):
        SamplerSpec.make(solver="heun", S_min=5, S_max=1)


def test_range_message_is_open_at_zero(gmm):
    with pytest.raises(ConfigError, match=r"outside the model's sigma range \(0, inf\)"):
        plan(gmm, solver="euler", schedule="edm", steps=4, sigma_min=0.0)


def test_one_step_edm_plan_reports_the_grid_it_runs(gmm):
    p = plan(gmm, solver="euler", schedule="edm", steps=1)
    assert p.sigmas.tolist() == [80.0, 0.0]
    assert (p.sigma_first, p.sigma_last_positive, p.sigma_end) == (80.0, 80.0, 0.0)
    q = plan(gmm, solver="euler", schedule="edm", steps=4, endpoint="sigma_min")
    assert (q.sigma_first, q.sigma_last_positive, q.sigma_end) == (80.0, pytest.approx(0.002), pytest.approx(0.002))
    assert q.to_dict()["sigma_last_positive"] == q.sigma_last_positive
