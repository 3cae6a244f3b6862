"""The network's precision and compilation (--net-dtype, --compile, --tf32): numbers, identity, provenance,
the compile fallback, and the bad inputs through the real command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diffbench
from diffbench.errors import ConfigError, NotApplicableError, UnknownNameError
from diffbench.models.registry import resolve_reference
from diffbench.sampling import precision
from diffbench.sampling.run import Sampler, sample
from diffbench.sampling.spec import SamplerSpec
from diffbench.sweep.cell import cell_identity, prepare, run_cell

# bfloat16 keeps 8 significant bits (7 stored + the implicit one): unit roundoff u = 2^-8
BF16_U = 2.0**-8
BIN = str(Path(sys.executable).parent / "diffbench")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return diffbench.load("digits-edm", device="cpu")



def test_spec_net_dtype_defaults_leave_identity_unchanged(digits):
    bench = prepare(digits, seeds=range(4), metrics=["ref-error"], device="cpu")
    base = SamplerSpec(steps=4)
    assert SamplerSpec(steps=4, compile=False, tf32=False) == base  # False is the default, left out
    ids = {cell_identity(bench, s, None)[0] for s in (base, SamplerSpec(steps=4, compile=False))}
    assert len(ids) == 1
    others = [SamplerSpec(steps=4, net_dtype=d) for d in ("fp32", "bf16", "fp16")]
    others.append(SamplerSpec(steps=4, compile=True))
    ids |= {cell_identity(bench, s, None)[0] for s in others}
    assert len(ids) == 5  # a bf16 cell is not an fp32 cell, nor a compiled one an eager one
    with pytest.raises(UnknownNameError, match="net dtype .fp8."):
        SamplerSpec(net_dtype="fp8")


def test_bf16_fd_close_to_fp32_on_digits(digits):
    """bf16 network evaluations on digits-edm: every image and the FD stay close to the fp32 run."""
    ref = str(resolve_reference("digits-stats"))
    bench = prepare(digits, seeds=range(80), metrics=["fd"], ref=ref, extractor="digits", blocks=1, device="cpu")
    fp32 = run_cell(bench, SamplerSpec(steps=8, net_dtype="fp32"))
    bf16 = run_cell(bench, SamplerSpec(steps=8, net_dtype="bf16"))
    a, b = fp32.metrics["fd"]["value"], bf16.metrics["fd"]["value"]
    assert torch.isfinite(torch.tensor(b))
    # each of the 15 evaluations rounds its inputs and weights to 8 bits (u = 2^-8 = 0.39%); the deterministic
    # ODE does not amplify these errors much, so a shift of the FD by more than 8u (3.1%) would mean the cast
    # is wrong, not just rounded (measured: 1.2%)
    assert abs(b - a) <= 8 * BF16_U * a, (a, b)
    assert bf16.provenance["network"]["autocast"] == "bfloat16"
    assert fp32.provenance["network"] == {
        "net_dtype": "fp32",
        "autocast": None,
        "force_fp32": True,
        "channels_last": False,
        "compile": "off",
    }


def test_images_bf16_within_rounding_and_fp32_equals_native(digits):
    native = sample(digits, seeds=range(4), steps=5, device="cpu")
    fp32 = sample(digits, seeds=range(4), steps=5, device="cpu", net_dtype="fp32")
    bf16 = sample(digits, seeds=range(4), steps=5, device="cpu", net_dtype="bf16")
    assert torch.equal(native.images, fp32.images)  # the digits model is fp32 already: a no-op
    assert native.provenance["network"] == {"net_dtype": "native", "compile": "off"}
    assert bf16.images.dtype == torch.float64  # the sampler state keeps its dtype
    # images in [-1, 1]: 9 evaluations at u each, the worst pixel within 32u (measured about 10u)
    assert float((bf16.images - fp32.images).abs().max()) <= 32 * BF16_U


def test_compile_fallback_when_torch_cannot_compile(digits, monkeypatch, capsys):
    """torch.compile fails lazily at the first call: the run goes on eagerly, one warning line, provenance says so."""

    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler found\nmore detail")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    precision._COMPILED.clear()
    eager = sample(digits, seeds=range(3), steps=3, device="cpu")
    out = sample(digits, seeds=range(3), steps=3, device="cpu", compile=True)
    assert torch.equal(out.images, eager.images)
    assert out.provenance["network"]["compile"].startswith("fell back to eager: RuntimeError: no C++ compiler")
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("warning: --compile:"), err
    again = sample(digits, seeds=range(3), steps=3, device="cpu", compile=True)  # the next cell of a sweep
    assert again.provenance["network"]["compile"] == out.provenance["network"]["compile"]
    assert torch.equal(again.images, eager.images) and not capsys.readouterr().err.strip()  # no second warning
    precision._COMPILED.clear()


def test_compile_refused_at_creation_falls_back(digits, monkeypatch, capsys):
    def refuse(fn, **kw):
        raise RuntimeError("torch.compile is not supported on Python 3.99+")

    monkeypatch.setattr(torch, "compile", refuse)
    precision._COMPILED.clear()
    out = sample(digits, seeds=range(2), steps=3, device="cpu", compile=True)
    assert "not supported on Python" in out.provenance["network"]["compile"]
    assert capsys.readouterr().err.count("warning: --compile") == 1


def test_unsupported_net_dtype_is_one_line(monkeypatch):
    def no_autocast(*a, **k):
        raise RuntimeError("Current CUDA Device does not support bfloat16. Please switch dtype to float16.")

    monkeypatch.setattr(torch, "autocast", no_autocast)
    with pytest.raises(ConfigError, match=r"--net-dtype bf16 is not supported on cpu: Current CUDA"):
        precision.check_net_dtype("bf16", torch.device("cpu"))


def test_tf32_refused_off_cuda(digits):
    with pytest.raises(NotApplicableError, match="--tf32 applies on CUDA only"):
        Sampler(digits, SamplerSpec(steps=3, tf32=True), device="cpu")


@pytest.mark.slow
def test_compile_on_cpu_matches_eager_and_is_reused(tiny_net):
    """torch.compile really compiles here (inductor on CPU, about a minute): close to eager, one graph per shape
    shared by two Samplers (two cells of a sweep)."""
    torch.set_num_threads(1)
    model = tiny_net()
    precision._COMPILED.clear()
    eager = sample(model, seeds=range(4), steps=3, device="cpu", batch=4)
    first = Sampler(model, SamplerSpec(steps=3, compile=True), device="cpu")
    a = first.run(list(range(4)))
    assert first.network_record()["compile"] == "compiled"
    second = Sampler(model, SamplerSpec(steps=3, compile=True), device="cpu")
    b = second.run(list(range(4)))
    assert len(precision._COMPILED[model]) == 1  # one compiled callable for both samplers
    assert torch.allclose(a.images, eager.images, rtol=0, atol=1e-4)  # fused float32 kernels reorder sums
    assert torch.equal(a.images, b.images)


def test_bad_precision_inputs_through_the_command(tmp_path):
    """One subprocess per bad input: one line each, exit 2."""
    cases = [
        (["--net-dtype", "fp8"], "--net-dtype"),
        (["--tf32", "--device", "cpu"], "--tf32"),
    ]
    for extra, needle in cases:
        p = subprocess.run(
            [BIN, "sample", "digits-edm", "--seeds", "0-1", "--nfe", "3", "-o", str(tmp_path / "o"), *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], (extra, p.returncode, p.stderr)
        assert not (tmp_path / "o").exists()
