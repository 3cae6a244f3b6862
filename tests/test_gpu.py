"""CUDA paths: sampling on the GPU with CUDA generators (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

import diffbench

pytestmark = pytest.mark.gpu


def test_cuda_sampling_is_batch_invariant_and_counts_nfe():
    model = diffbench.load("gmm")
    a = diffbench.sample(model, seeds=range(7), solver="heun", nfe=35, S_churn=10.0, batch=7, device="cuda")
    b = diffbench.sample(model, seeds=range(7), solver="heun", nfe=35, S_churn=10.0, batch=1, device="cuda")
    assert a.images.device.type == "cuda" and a.nfe == 35
    assert torch.equal(a.images, b.images)
    assert a.provenance["environment"]["generator_device"].startswith("cuda")


def test_fp16_precond_runs_half_on_cuda(tiny_net):
    model = tiny_net(use_fp16=True)
    out = diffbench.sample(model, seeds=range(4), nfe=7, device="cuda")
    assert torch.isfinite(out.images).all()


def test_net_dtypes_channels_last_and_tf32_on_cuda(tiny_net):
    """bf16/fp16 autocast with channels_last on CUDA: close to fp32; TF32 off unless asked; recorded."""
    model = tiny_net(use_fp16=True)
    fp32 = diffbench.sample(model, seeds=range(8), nfe=7, device="cuda", net_dtype="fp32")
    assert fp32.provenance["network"]["tf32"] is False and fp32.provenance["network"]["force_fp32"] is True
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    for dtype in ("bf16", "fp16"):
        out = diffbench.sample(model, seeds=range(8), nfe=7, device="cuda", net_dtype=dtype)
        assert out.provenance["network"]["channels_last"] is True
        assert float((out.images - fp32.images).abs().max()) < 0.1  # 7 evaluations at 2^-8 (bf16) or 2^-11
    tf32 = diffbench.sample(model, seeds=range(8), nfe=7, device="cuda", net_dtype="fp32", tf32=True)
    assert tf32.provenance["network"]["tf32"] is True and torch.backends.cudnn.allow_tf32
    again = diffbench.sample(model, seeds=range(8), nfe=7, device="cuda", net_dtype="fp32")
    assert torch.equal(again.images, fp32.images)  # channels_last of the bf16 runs undone, TF32 off again


def test_compile_on_cuda_close_to_eager(tiny_net):
    model = tiny_net()
    eager = diffbench.sample(model, seeds=range(8), nfe=7, device="cuda", net_dtype="bf16")
    comp = diffbench.sample(model, seeds=range(8), nfe=7, device="cuda", net_dtype="bf16", compile=True)
    assert comp.provenance["network"]["compile"] == "compiled"
    assert float((comp.images - eager.images).abs().max()) < 0.05


def test_batch_auto_halves_on_a_real_out_of_memory(tiny_net):
    """A batch too large for the GPU (a 2^40-element request inside the first network call) is halved."""
    from diffbench.sampling.autobatch import BatchFit
    from diffbench.sampling.run import Sampler
    from diffbench.sampling.spec import SamplerSpec

    run = Sampler(tiny_net(), SamplerSpec(steps=3), device="cuda")
    real = run.run

    def hungry(seeds, **kw):
        if len(seeds) > 2:
            torch.empty(2**40, device="cuda")  # raises torch.cuda.OutOfMemoryError
        return real(seeds, **kw)

    fit = BatchFit(8)
    out = fit.run(hungry, list(range(5)))
    assert out.seeds == list(range(5)) and fit.size == 2
    assert torch.equal(out.images, torch.cat([real([0, 1]).images, real([2, 3]).images, real([4]).images]))
