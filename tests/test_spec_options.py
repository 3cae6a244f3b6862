"""One option table: SamplerSpec's declarations give the solver/schedule option lists, the CLI flags and their
choices, and the sweep axes; resolving a spec's defaults lives with the spec (provenance stays a leaf)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from diffbench.cli import options as cli_options
from diffbench.errors import ConfigError, UnknownNameError
from diffbench.sampling import spec as spec_module
from diffbench.sampling import vocabulary as V
from diffbench.sampling.spec import SCHEDULE_OPTIONS, SOLVER_OPTIONS, OptionInfo, SamplerSpec, resolved_spec


def test_solver_and_schedule_options_come_from_the_declarations():
    assert SOLVER_OPTIONS == (
        *("alpha", "S_churn", "S_min", "S_max", "S_noise", "churn_per_step", "eta", "order"),
        *("lower_order_final", "analytic_first_step", "variant", "prediction"),
        *("restart_n", "restart_k", "restart_tmin", "restart_tmax", "restart_gamma"),
    )
    assert SCHEDULE_OPTIONS == ("rho", "epsilon_s", "M", "C_1", "C_2")


def test_every_cli_option_is_a_declared_field_with_the_registries_choices():
    fields = {f.name for f in dataclasses.fields(SamplerSpec)}
    by_key = cli_options.BY_KEY
    assert set(by_key) == {k for k in fields if spec_module.option_info(k).cli}
    assert {"epsilon_s", "M", "C_1", "C_2"} == fields - set(by_key)  # library-only, as before
    choices = {k: by_key[k].choices for k in ("endpoint", "nfe_policy", "noise", "sigma_t", "scaling", "dtype")}
    assert choices == {
        "endpoint": V.ENDPOINTS,
        "nfe_policy": V.NFE_POLICIES,
        "noise": V.NOISE_MODES,
        "sigma_t": V.SIGMA_T,
        "scaling": V.SCALING,
        "dtype": V.DTYPES,
    }
    assert by_key["prediction"].choices == V.PREDICTIONS
    assert (by_key["S_churn"].flag, by_key["analytic_first_step"].flag, by_key["nfe_policy"].flag) == (
        "--churn",
        "--afs",
        "--nfe-policy",
    )
    assert by_key["analytic_first_step"].type is bool and by_key["lower_order_final"].type is str
    assert by_key["solver"].default == "heun" and by_key["denoise_to_zero"].default is None


def test_a_declared_option_becomes_a_flag_and_a_sweep_axis(monkeypatch):
    """What adding an option takes: one declared field; here one more declaration is fed to the derivation."""
    extra = ("weight", float, 1.0, OptionInfo(help="A declared test option.", min=1))
    declared = spec_module.declared_options()
    monkeypatch.setattr(spec_module, "declared_options", lambda: [*declared, extra])
    derived = cli_options._derived()
    monkeypatch.setattr(cli_options, "SAMPLER_OPTIONS", derived)
    o = derived[-1]
    assert (o.key, o.flag, o.type, o.min, o.default) == ("weight", "--weight", float, 1, 1.0)

    got = {}
    app = typer.Typer()

    @app.command()
    @cli_options.sampler_options(axes=True)
    def cmd(sampler: dict) -> None:
        got.update(sampler)

    result = CliRunner().invoke(app, ["--weight", "1,1.5,2", "--nfe", "9,17"])
    assert result.exit_code == 0, result.output
    assert got == {"weight": [1.0, 1.5, 2.0], "nfe": [9, 17]}
    bad = CliRunner().invoke(app, ["--weight", "0.5"])
    assert bad.exit_code != 0 and "--weight must be >= 1" in str(bad.exception)


def test_declared_choices_are_checked_on_the_spec():
    with pytest.raises(UnknownNameError, match="unknown endpoint 'end'"):
        SamplerSpec.make(endpoint="end")
    with pytest.raises(UnknownNameError, match="unknown nfe policy 'closest'"):
        SamplerSpec.make(nfe_policy="closest")
    with pytest.raises(ConfigError, match="restart_k"):
        SamplerSpec.make(solver="restart", restart_k=-1)
    assert SamplerSpec.make(solver="restart", restart_k=0).restart_k == 0  # K = 0: no restarts, as the solver allows


def test_resolved_spec_writes_every_default_used():
    r = resolved_spec(SamplerSpec.make(solver="heun", nfe=35))
    assert r["rho"] == 7 and r["S_churn"] == 0 and r["alpha"] == 1 and "eta" not in r and "restart_n" not in r
    assert resolved_spec(SamplerSpec.make(solver="restart", steps=6))["restart_n"] == 3


def test_provenance_and_the_option_table_import_no_sampler():
    """provenance is a leaf (no registry import); the CLI's option table loads neither torch nor the solvers."""
    code = (
        "import sys, diffbench.provenance, diffbench.cli.options\n"
        "print(sorted(m for m in sys.modules if m.startswith(('diffbench.sampling.solvers', 'diffbench.sampling.plan',"
        " 'diffbench.sampling.schedules'))))\n"
        "import diffbench.cli.options as o; assert o.SAMPLER_OPTIONS\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    lazy = "import sys, diffbench.cli.options; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", lazy], capture_output=True, text=True, check=True).stdout.strip() == (
        "False"
    )
