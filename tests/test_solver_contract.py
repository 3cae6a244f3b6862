"""The solver and schedule registries' contract, at its edges: defaults as published, every refusal's
boundary and its message, registration through the decorator, round_sigma, and the sigma-grid file format.

Written against what mutation testing (benchmarks/mutation.sh) showed the other tests left open: a changed
default, a `<` turned into `<=` at a refusal's boundary, or a message lost would otherwise pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffbench
from diffbench.errors import ConfigError, UnknownNameError
from diffbench.sampling import schedules as S
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.schedules import edm_grid
from diffbench.sampling.solvers import SOLVERS, all_solvers, get_solver, round_sigma, solver
from diffbench.sampling.solvers.restart import check_restart, restart_nfe, restart_point

MODEL = diffbench.load("gmm:shape=2x3x3")
SHAPE = tuple(MODEL.sample_shape)


def D(x, sigma):
    return MODEL(x, torch.full((x.shape[0],), float(sigma), dtype=torch.float64))


# Each solver's defaults, with their sources: a changed default changes what `--solver NAME` reproduces.
PUBLISHED_DEFAULTS = {
    # EDM Alg. 2 with churn off (Karras et al. 2022, Table 5: S_tmin 0, S_tmax inf, S_noise 1 when S_churn = 0)
    "euler": {"S_churn": 0.0, "S_min": 0.0, "S_max": math.inf, "S_noise": 1.0, "churn_per_step": None},
    "heun": {"alpha": 1.0, "S_churn": 0.0, "S_min": 0.0, "S_max": math.inf, "S_noise": 1.0, "churn_per_step": None},
    "euler-ancestral": {"eta": 1.0, "S_noise": 1.0},  # eta = 1: DDPM ancestral (Song et al. 2021a, Eq. 16)
    "ddim": {"eta": 0.0},  # deterministic DDIM (Song et al. 2021a)
    "dpm-solver-2": {},
    "dpm-solver-3": {},
    "dpmpp-2s": {},
    # lower_order_final 15: diffusers' DPMSolverMultistepScheduler; the published 3M (REFERENCE §4)
    "dpmpp-2m": {"lower_order_final": 15, "analytic_first_step": False},
    "dpmpp-3m": {"lower_order_final": 15, "analytic_first_step": False, "variant": "published"},
    "dpm-solver-3m": {"lower_order_final": 15, "analytic_first_step": False, "variant": "published"},
    "dpmpp-2m-sde": {"eta": 1.0, "S_noise": 1.0, "lower_order_final": 15},
    "unipc": {
        "order": 3,
        "variant": "bh2",
        "prediction": "data",
        "lower_order_final": 15,
        "analytic_first_step": False,
    },
    "ipndm": {"order": 4, "lower_order_final": "never", "analytic_first_step": False},  # Zhang & Chen 2023
    "deis": {"order": 3, "lower_order_final": "never", "analytic_first_step": False},
    "lms": {"order": 4, "lower_order_final": "never", "analytic_first_step": False},
    # Xu et al. 2023: N_Restart 3, K 2, [t_min, t_max] = [0.06, 0.30]; churn window [0.01, 1] of its inner steps
    "restart": {
        "restart_n": 3,
        "restart_k": 2,
        "restart_tmin": 0.06,
        "restart_tmax": 0.30,
        "restart_gamma": 0.0,
        "S_min": 0.01,
        "S_max": 1.0,
        "S_noise": 1.0,
    },
}


def test_every_solver_has_its_published_defaults():
    assert sorted(PUBLISHED_DEFAULTS) == sorted(s.name for s in all_solvers()), (
        "a solver was added or removed: list its defaults here"
    )
    for name, want in PUBLISHED_DEFAULTS.items():
        assert get_solver(name).defaults() == want, name
        described = get_solver(name).describe()["defaults"]
        assert described == {k: ("inf" if v == math.inf else v) for k, v in want.items()}, name


# options that make each default observable (churn on, restarts reaching sigma > S_max) without changing it
ACTIVATE = {
    "euler": {"S_churn": 10.0},
    "heun": {"S_churn": 10.0},
    "restart": {"restart_gamma": 0.1, "restart_tmax": 1.5},
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_DEFAULTS))
def test_the_defaults_are_what_runs(name):
    """The function's own defaults run when no option is given: the same samples as passing them, on a
    15-step sigma_min grid, where lower_order_final = 15 (diffusers) is the threshold itself."""
    info = get_solver(name)
    sigmas = edm_grid(16, 0.002, 80.0)  # 15 steps, ending at sigma_min

    def run(**options):
        noise = NoiseSource([1, 2])
        x = noise.latents(SHAPE).double() * 80
        return info.fn(D, x, sigmas, noise=noise, **ACTIVATE.get(name, {}), **options)

    explicit = {k: v for k, v in PUBLISHED_DEFAULTS[name].items() if k not in ACTIVATE.get(name, {})}
    assert torch.equal(run(), run(**explicit))
    if explicit.get("lower_order_final") == 15:  # the threshold matters here: 15 steps are not fewer than 15
        assert not torch.equal(run(), run(lower_order_final=16))


def test_describe_lists_conventions_only_where_a_solver_has_them():
    assert "conventions" not in get_solver("heun").describe()
    assert get_solver("restart").describe()["conventions"]["restart_point"]


# --- stochastic solvers without a noise source: one line naming the solver -------------------------------


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("euler-ancestral", {"eta": 1.0}, "euler-ancestral with eta > 0 needs a noise source"),
        ("ddim", {"eta": 0.5}, "ddim with eta > 0 needs a noise source"),
        ("dpmpp-2m-sde", {"eta": 1.0}, "dpmpp-2m-sde with eta > 0 needs a noise source"),
        ("restart", {}, "restart needs a noise source"),
    ],
)
def test_a_stochastic_step_without_noise_names_the_solver(name, options, message):
    sigmas = torch.cat([edm_grid(12, 0.002, 80.0), torch.zeros(1, dtype=torch.float64)])
    x = torch.ones(1, *SHAPE, dtype=torch.float64) * 80
    with pytest.raises(ConfigError) as exc:
        get_solver(name).fn(D, x, sigmas, noise=None, **options)
    assert str(exc.value) == message


@pytest.mark.parametrize("name", ["euler-ancestral", "ddim", "dpmpp-2m-sde"])
def test_a_negative_eta_is_refused_with_its_value(name):
    sigmas = torch.cat([edm_grid(4, 0.002, 80.0), torch.zeros(1, dtype=torch.float64)])
    with pytest.raises(ConfigError) as exc:
        get_solver(name).fn(D, torch.zeros(1, *SHAPE, dtype=torch.float64), sigmas, noise=None, eta=-0.25)
    assert str(exc.value) == "eta must be >= 0, got -0.25"


@pytest.mark.parametrize("name", ["euler-ancestral", "ddim", "dpmpp-2m-sde"])
def test_eta_zero_needs_no_noise_source(name):
    """eta = 0 is deterministic: no noise is drawn, so none is needed (the refusal is for eta > 0 only)."""
    sigmas = torch.cat([edm_grid(6, 0.002, 80.0), torch.zeros(1, dtype=torch.float64)])
    x = torch.randn(2, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 80
    out = get_solver(name).fn(D, x, sigmas, noise=None, eta=0.0)
    assert torch.isfinite(out).all()


# --- restart's parameters: each boundary of the refusals ---------------------------------------------------


@pytest.mark.parametrize(
    "n,k,tmin,tmax,gamma",
    [
        (2, 0, 0.06, 0.30, 0.0),  # N_Restart = 2: one Heun step per restart, the smallest allowed
        (3, 2, 0.06, 0.30, math.sqrt(2) - 1),  # gamma at its bound sqrt(2) - 1 (EDM Alg. 2's churn bound)
        (3, 2, 1e-9, 1e-8, 0.0),
    ],
)
def test_restart_parameters_at_their_bounds_are_accepted(n, k, tmin, tmax, gamma):
    check_restart(n, k, tmin, tmax, gamma)


@pytest.mark.parametrize(
    "n,k,tmin,tmax,gamma,message",
    [
        (1, 2, 0.06, 0.3, 0.0, "restart_n (N_Restart, grid points per restart) must be an integer >= 2, got 1"),
        (2.5, 2, 0.06, 0.3, 0.0, "restart_n (N_Restart, grid points per restart) must be an integer >= 2, got 2.5"),
        (3, -1, 0.06, 0.3, 0.0, "restart_k (K, the number of restarts) must be an integer >= 0, got -1"),
        (3, 1.5, 0.06, 0.3, 0.0, "restart_k (K, the number of restarts) must be an integer >= 0, got 1.5"),
        (3, 2, 0.0, 0.3, 0.0, "restart needs 0 < restart_tmin < restart_tmax (finite), got 0.0 and 0.3"),
        (3, 2, 0.3, 0.3, 0.0, "restart needs 0 < restart_tmin < restart_tmax (finite), got 0.3 and 0.3"),
        (3, 2, 0.06, math.inf, 0.0, "restart needs 0 < restart_tmin < restart_tmax (finite), got 0.06 and inf"),
        (3, 2, math.nan, 0.3, 0.0, "restart needs 0 < restart_tmin < restart_tmax (finite), got nan and 0.3"),
        (3, 2, 0.06, 0.3, 0.5, "restart_gamma must be in [0, sqrt(2) - 1], got 0.5"),
        (3, 2, 0.06, 0.3, math.sqrt(2) - 1 + 1e-9, "restart_gamma must be in [0, sqrt(2) - 1], got 0.41421356"),
        (3, 2, 0.06, 0.3, -0.01, "restart_gamma must be in [0, sqrt(2) - 1], got -0.01"),
        (3, 2, 0.06, 0.3, math.nan, "restart_gamma must be in [0, sqrt(2) - 1], got nan"),
    ],
)
def test_restart_parameters_past_their_bounds_are_refused(n, k, tmin, tmax, gamma, message):
    with pytest.raises(ConfigError) as exc:
        check_restart(n, k, tmin, tmax, gamma)
    assert str(exc.value).startswith(message)


def restart_run(**options):
    sigmas = torch.cat([edm_grid(12, 0.002, 80.0), torch.zeros(1, dtype=torch.float64)])
    noise = NoiseSource([0])
    x = noise.latents(SHAPE).double() * 80
    return sigmas, get_solver("restart").fn(D, x, sigmas, noise=noise, **options)


def test_restart_tmax_must_lie_strictly_above_the_restart_point_and_at_most_sigma_max():
    sigmas = edm_grid(12, 0.002, 80.0)
    j = restart_point(sigmas, 0.06)
    s_lo = float(sigmas[j])
    with pytest.raises(ConfigError) as exc:
        restart_run(restart_tmax=s_lo)  # equal to the restart point: an empty restart interval
    assert str(exc.value) == (
        f"restart_tmax {s_lo} must lie above the restart point {s_lo:.4g} (the grid sigma nearest "
        f"restart_tmin) and at most sigma_max 80"
    )
    restart_run(restart_tmax=80.0)  # t_max = sigma_max is allowed
    with pytest.raises(ConfigError, match="at most sigma_max 80"):
        restart_run(restart_tmax=80.5)
    restart_run(restart_k=0, restart_tmax=s_lo)  # no restarts: t_max is not used, so not checked
    with pytest.raises(ConfigError, match="must lie above the restart point"):
        restart_run(restart_k=1, restart_tmax=s_lo)


def test_restart_k_zero_is_heun_on_the_main_grid():
    sigmas, out = restart_run(restart_k=0)
    noise = NoiseSource([0])
    x = noise.latents(SHAPE).double() * 80
    assert torch.equal(out, get_solver("heun").fn(D, x, sigmas, noise=None))


def test_restart_point_is_the_positive_grid_sigma_nearest_tmin_after_the_first():
    g = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.0], dtype=torch.float64)
    assert restart_point(g, 0.12) == 3
    assert restart_point(g, 0.03) == 3  # the final 0 is not a restart point, however near t_min
    assert restart_point(g, 100.0) == 1  # never the first sigma (there would be no step before it)
    assert restart_point(torch.tensor([80.0, 0.0], dtype=torch.float64), 0.06) == 0
    assert restart_point(torch.tensor([2.0, 1.0], dtype=torch.float64), 1.5) == 1  # a tie: the first after sigma_max


def test_restart_nfe_counts_its_options():
    assert restart_nfe({}) == 2 * 2 * (3 - 1)
    assert restart_nfe({"restart_n": 4, "restart_k": 3}) == 2 * 3 * 3
    assert restart_nfe({"restart_n": 6}) == 2 * 2 * 5
    assert restart_nfe({"restart_k": 0}) == 0


# --- registration and round_sigma -------------------------------------------------------------------------


def test_the_decorator_registers_the_function_under_its_name():
    def my_solver(denoiser, x, sigmas, *, noise=None, callback=None, gain: float = 2.0):
        return x

    try:
        assert solver("test-only-solver", order=1, stochastic=False, paper="none", options=("gain",))(my_solver) is (
            my_solver
        )
        info = get_solver("test-only-solver")
        assert info.name == "test-only-solver" and info.fn is my_solver and info.paper == "none"
        assert info.defaults() == {"gain": 2.0} and SOLVERS["test-only-solver"] is info
    finally:
        SOLVERS.pop("test-only-solver", None)


def test_round_sigma_uses_the_denoisers_own():
    class Discrete:
        def round_sigma(self, sigma):
            return torch.round(sigma * 4) / 4

    assert round_sigma(Discrete(), 0.37) == 0.25
    assert isinstance(round_sigma(Discrete(), 0.37), float)
    assert round_sigma(object(), 0.37) == 0.37


# --- schedules ---------------------------------------------------------------------------------------------


def test_vp_default_range_function_is_song_sde_at_eps_and_1():
    lo, hi = S._vp_default_range()  # called here, not only at import (the registry holds its import-time value)
    assert (lo, hi) == S.SCHEDULES["vp"].default_range
    assert math.isclose(lo, math.sqrt(math.expm1(0.5 * 19.9e-6 + 0.1e-3)), rel_tol=1e-12)
    assert math.isclose(hi, math.sqrt(math.expm1(0.5 * 19.9 + 0.1)), rel_tol=1e-12)


def test_file_grid_is_float64_whatever_the_file_holds(tmp_path):
    path = tmp_path / "g.npy"
    np.save(path, np.array([14.5, 3.3, 0.7], dtype=np.float32))
    g = S.file_grid(path)
    assert g.dtype == torch.float64
    assert g.tolist() == [float(np.float32(v)) for v in (14.5, 3.3, 0.7)]


def test_file_grid_largest_first_sigma(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text(f"{S.FILE_MAX_SIGMA!r}\n1.0\n")
    assert float(S.file_grid(path)[0]) == S.FILE_MAX_SIGMA  # at the bound: accepted
    path.write_text("2e6\n1.0\n")
    with pytest.raises(ConfigError) as exc:
        S.file_grid(path)
    assert f"starts at 2e+06, above the largest sigma diffbench accepts ({S.FILE_MAX_SIGMA:g})" in str(exc.value)


@pytest.mark.parametrize("sigma,sigma_next,eta", [(2.0, 1.0, 1.0), (3.0, 1.0, 0.5), (1.5, 0.5, 1.0), (80.0, 1.0, 2.0)])
def test_ancestral_step_split_at_any_sigma(sigma, sigma_next, eta):
    """sigma_up = min(s', eta sqrt(s'^2 (s^2 - s'^2) / s^2)), sigma_down = sqrt(s'^2 - sigma_up^2) (Song et al.
    2021a, Eq. 16), written out here; sigma_next = 1 included (a value the code must not special-case)."""
    from diffbench.sampling.solvers.ancestral import ancestral_step

    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    down, got_up = ancestral_step(sigma, sigma_next, eta)
    assert got_up == pytest.approx(up, rel=1e-15) and down == pytest.approx(math.sqrt(sigma_next**2 - up**2), rel=1e-15)
    assert ancestral_step(sigma, 0.0, eta) == (0.0, 0.0) and ancestral_step(sigma, sigma_next, 0.0) == (sigma_next, 0.0)


# --- option checks of the multistep family ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name,orders", [("unipc", (1, 2, 3)), ("deis", (1, 2, 3)), ("lms", (1, 2, 3, 4)), ("ipndm", (1, 2, 3, 4))]
)
def test_each_supported_order_runs_and_others_are_refused_by_name(name, orders):
    sigmas = torch.cat([edm_grid(8, 0.002, 80.0), torch.zeros(1, dtype=torch.float64)])
    x = torch.randn(2, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 80
    outs = [get_solver(name).fn(D, x, sigmas, order=o) for o in orders]
    for a, b in zip(outs, outs[1:]):  # every order is a different method
        assert not torch.allclose(a, b, rtol=1e-9, atol=1e-9)
    for bad in (0, max(orders) + 1):
        with pytest.raises(ConfigError) as exc:
            get_solver(name).fn(D, x, sigmas, order=bad)
        assert str(exc.value) == f"{name} supports order {', '.join(map(str, orders))}; got {bad}"


@pytest.mark.parametrize(
    "option,value,kind", [("variant", "bh3", "unipc variant"), ("prediction", "v", "unipc prediction")]
)
def test_unipc_names_an_unknown_variant_or_prediction(option, value, kind):
    sigmas = torch.cat([edm_grid(4, 0.002, 80.0), torch.zeros(1, dtype=torch.float64)])
    with pytest.raises(UnknownNameError) as exc:
        get_solver("unipc").fn(D, torch.zeros(1, *SHAPE, dtype=torch.float64), sigmas, **{option: value})
    assert (exc.value.kind, exc.value.name) == (kind, value)
    assert exc.value.valid == sorted({"variant": ("bh1", "bh2"), "prediction": ("data", "noise")}[option])


def test_vp_time_is_the_inverse_of_the_vp_sigma():
    """t(sigma) of the Song et al. VP SDE (beta_d 19.9, beta_min 0.1), EDM Table 1, against sigma(t) there."""
    t = np.array([1e-3, 0.01, 0.3, 0.77, 1.0])
    sigma = np.sqrt(np.expm1(0.5 * 19.9 * t**2 + 0.1 * t))  # sigma(t) = sqrt(e^(beta_d t^2/2 + beta_min t) - 1)
    np.testing.assert_allclose(S.vp_time(sigma), t, rtol=1e-12)
    assert math.isclose(float(S.vp_time(0.5, beta_d=10.0, beta_min=1.0)), (math.sqrt(1 + 20 * math.log(1.25)) - 1) / 10)


# --- DPM-Solver-3 (singlestep) written out from Lu et al. 2022, Alg. 2, in lambda = -log sigma -----------------


def dpm_solver_3_written_out(x, sigmas, r1=1 / 3, r2=2 / 3):
    """DPM-Solver-3 with alpha = 1 (EDM space), eps = (x - D)/sigma; lambda = -log sigma (Lu et al. 2022, Alg. 2)."""

    def eps(x, sig):
        return (x - D(x, sig)) / sig

    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if s_next == 0:
            x = D(x, s)
            continue
        lam, lam_next = -math.log(s), -math.log(s_next)
        h = lam_next - lam
        sig1, sig2 = math.exp(-(lam + r1 * h)), math.exp(-(lam + r2 * h))
        e = eps(x, s)
        u1 = x - sig1 * (math.exp(r1 * h) - 1) * e
        d1 = eps(u1, sig1) - e
        u2 = x - sig2 * (math.exp(r2 * h) - 1) * e - sig2 * r2 / r1 * ((math.exp(r2 * h) - 1) / (r2 * h) - 1) * d1
        d2 = eps(u2, sig2) - e
        x = x - s_next * (math.exp(h) - 1) * e - s_next / r2 * ((math.exp(h) - 1) / h - 1) * d2
    return x


def test_dpm_solver_3_is_algorithm_2_with_r1_one_third_and_r2_two_thirds():
    sigmas = torch.cat([edm_grid(6, 0.002, 80.0), torch.zeros(1, dtype=torch.float64)])
    x = torch.randn(2, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 80
    got = get_solver("dpm-solver-3").fn(D, x, sigmas)
    torch.testing.assert_close(got, dpm_solver_3_written_out(x, sigmas), rtol=1e-10, atol=1e-10)
    other = dpm_solver_3_written_out(x, sigmas, r1=1 / 4)  # r1 matters at this budget (else no check of it)
    assert float((other - got).abs().max()) > 1e-6


@pytest.mark.parametrize("name", [s.name for s in all_solvers() if "lower_order_final" in s.options])
def test_lower_order_final_is_honoured(name):
    """'always' lowers the last steps' order, 'never' does not, N lowers them only when the run has fewer than
    N steps (REFERENCE §4); 10 steps ending at sigma_min, where the last steps are real steps."""
    info = get_solver(name)
    sigmas = edm_grid(11, 0.002, 80.0)
    x = torch.randn(2, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 80
    opts = {"eta": 0.0} if info.stochastic else {}

    def run(lof):
        return info.fn(D, x, sigmas, noise=None, lower_order_final=lof, **opts)

    always, never = run("always"), run("never")
    assert not torch.allclose(always, never, rtol=1e-9, atol=1e-9)
    assert torch.equal(run(11), always) and torch.equal(run(10), never)  # 10 steps: fewer than 11, not than 10
    assert torch.equal(run("11"), always) and torch.equal(run("1"), never)  # the CLI's string form of N
    assert torch.equal(run(1), never)  # N = 1: fewer than 1 step never happens
    for bad in (0, "0", -3, "x", True, 2.5):
        with pytest.raises(ConfigError) as exc:
            run(bad)
        assert str(exc.value) == f"lower_order_final must be 'always', 'never' or a step count N > 0, got {bad!r}"


# --- EDM churn (Karras et al. 2022, Alg. 2) ---------------------------------------------------------------


def test_churn_gammas_follow_algorithm_2_line_4():
    from diffbench.sampling.solvers.edm import churn_gammas

    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    assert churn_gammas(sigmas) == [0.0] * 5  # no churn unless asked
    g = min(2.0 / 5, math.sqrt(2) - 1)  # gamma = min(S_churn / N, sqrt 2 - 1)
    assert churn_gammas(sigmas, S_churn=2.0) == [g] * 5
    # S_tmin <= sigma_i <= S_tmax, both ends included
    assert churn_gammas(sigmas, S_churn=2.0, S_min=1.0, S_max=5.0) == [0.0, g, g, g, 0.0]
    assert churn_gammas(sigmas, S_churn=100.0) == [math.sqrt(2) - 1] * 5
    assert churn_gammas(sigmas, churn_per_step=0.1, S_churn=2.0) == [0.1] * 5  # gamma given directly


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_churn_lands_on_the_levels_a_discrete_model_has(name):
    """sigma_hat = round_sigma(sigma (1 + gamma)) (EDM Alg. 2 line 5 with the network's round_sigma)."""

    class Discrete:
        def __init__(self):
            self.sigmas = []

        def round_sigma(self, sigma):
            return torch.round(torch.as_tensor(sigma) * 8) / 8

        def __call__(self, x, sigma):
            self.sigmas.append(float(sigma))
            return D(x, sigma)

    sigmas = torch.tensor([20.0, 10.0, 5.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    net = Discrete()
    noise = NoiseSource([0])
    x = noise.latents(SHAPE).double() * 20
    get_solver(name).fn(net, x, sigmas, noise=noise, churn_per_step=0.3)
    hats = [round(8 * s * 1.3) / 8 for s in (20.0, 10.0, 5.0, 2.0, 1.0)]
    if name == "heun":  # each step to sigma > 0 then evaluates again at its end
        hats = [v for h, s_next in zip(hats, (10.0, 5.0, 2.0, 1.0, None)) for v in (h, s_next) if v is not None]
    assert net.sigmas == hats


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_churn_without_noise_names_it(name):
    sigmas = torch.cat([edm_grid(4, 0.002, 80.0), torch.zeros(1, dtype=torch.float64)])
    with pytest.raises(ConfigError) as exc:
        get_solver(name).fn(D, torch.ones(1, *SHAPE, dtype=torch.float64), sigmas, noise=None, S_churn=1.0)
    assert str(exc.value) == "churn needs a noise source"


@pytest.mark.parametrize("alpha", [0.0, -0.5, 1.0000001, 2.0])
def test_heun_alpha_outside_0_1_is_refused(alpha):
    sigmas = torch.cat([edm_grid(4, 0.002, 80.0), torch.zeros(1, dtype=torch.float64)])
    with pytest.raises(ConfigError) as exc:
        get_solver("heun").fn(D, torch.ones(1, *SHAPE, dtype=torch.float64), sigmas, alpha=alpha)
    assert str(exc.value) == f"alpha must be in (0, 1], got {alpha}"


@pytest.mark.parametrize("name", ["dpmpp-3m", "dpm-solver-3m"])
def test_an_unknown_3m_variant_is_named(name):
    sigmas = torch.cat([edm_grid(4, 0.002, 80.0), torch.zeros(1, dtype=torch.float64)])
    with pytest.raises(UnknownNameError) as exc:
        get_solver(name).fn(D, torch.ones(1, *SHAPE, dtype=torch.float64), sigmas, variant="paper")
    assert (exc.value.kind, exc.value.name, exc.value.valid) == (f"{name} variant", "paper", ["published", "taylor"])


def test_steps_for_defaults_to_the_edm_endpoint():
    heun = get_solver("heun")
    assert heun.steps_for(35) == heun.steps_for(35, endpoint="edm") == 18  # EDM's 18 steps, 35 NFE
    assert heun.steps_for(36, endpoint="sigma_min") == 18 and heun.steps_for(36) is None


# --- the iDDPM grid's level selection ----------------------------------------------------------------------


def test_iddpm_grid_includes_levels_at_the_range_ends_and_all_of_them():
    u = S.iddpm_u()
    lo, hi = float(u[700]), float(u[20])  # a range whose ends are levels themselves
    inside = u[(u >= lo) & (u <= hi)]
    assert len(inside) == 681
    g = S.iddpm_grid(681, lo, hi)  # every level in the range, ends included
    assert torch.equal(g, inside) and float(g[0]) == hi and float(g[-1]) == lo
    with pytest.raises(ConfigError) as exc:
        S.iddpm_grid(682, lo, hi)
    assert str(exc.value) == f"the iddpm schedule has only 681 levels in [{lo}, {hi}]; 682 points were asked for"


def test_a_solver_whose_steps_evaluate_nothing_is_refused():
    def free(denoiser, x, sigmas, *, noise=None, callback=None):
        return x

    with pytest.raises(ValueError) as exc:
        solver("test-only-free", order=1, stochastic=False, paper="none", evals_per_step=0)(free)
    assert str(exc.value) == "solver 'test-only-free': evals_per_step must be >= 1, got 0"
    assert "test-only-free" not in SOLVERS
    try:  # one evaluation per step is enough
        solver("test-only-free", order=1, stochastic=False, paper="none", evals_per_step=1)(free)
        assert get_solver("test-only-free").steps_for(7) == 7
    finally:
        SOLVERS.pop("test-only-free", None)


@pytest.mark.parametrize("name", ["heun", "euler", "dpmpp-2m", "dpm-solver-3", "restart"])
def test_steps_for_inverts_nfe_at_every_budget(name):
    """steps_for(nfe) is the step count whose nfe() is exactly nfe, None where no step count spends it."""
    info = get_solver(name)
    for endpoint in ("edm", "sigma_min"):
        spent = {info.nfe(k, endpoint=endpoint): k for k in range(info.min_steps, 60)}
        for nfe in range(1, 60):
            assert info.steps_for(nfe, endpoint=endpoint) == spent.get(nfe), (endpoint, nfe)


def test_order_at_defaults_lower_the_final_steps_and_count_no_history():
    from diffbench.sampling.solvers import order_at

    assert [order_at(j, 6, 3) for j in range(6)] == [1, 2, 3, 3, 2, 1]
    assert [order_at(j, 6, 3, "never") for j in range(6)] == [1, 2, 3, 3, 3, 3]


def test_an_unknown_schedule_is_named_as_a_schedule():
    with pytest.raises(UnknownNameError) as exc:
        S.get_schedule("karras")
    assert (exc.value.kind, exc.value.name) == ("schedule", "karras") and "file:PATH" in exc.value.valid


def test_an_unknown_solver_is_named_with_the_registered_ones():
    with pytest.raises(UnknownNameError) as exc:
        get_solver("dpmpp-2n")
    assert (exc.value.kind, exc.value.name) == ("solver", "dpmpp-2n")
    assert exc.value.valid == sorted(s.name for s in all_solvers())


def test_nfe_and_intervals_default_to_the_edm_endpoint_without_a_final_denoise():
    from diffbench.sampling.solvers import intervals

    assert intervals(18, endpoint="edm") == (17, 1) and intervals(18, endpoint="sigma_min") == (18, 0)
    assert intervals(18, endpoint="sigma_min", denoise_to_zero=True) == (18, 1)
    assert get_solver("heun").nfe(18) == 35 == get_solver("heun").nfe(18, endpoint="edm")  # EDM's 18 steps
