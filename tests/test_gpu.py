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
