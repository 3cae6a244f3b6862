"""Per-seed randomness (REFERENCE §1): EDM's stream order, batch-size invariance bit for bit."""

from __future__ import annotations

import pytest
import torch

import diffbench
from diffbench.sampling.noise import NoiseSource

STOCHASTIC = [
    ("heun", {"S_churn": 30.0, "S_min": 0.01, "S_max": 1.0, "S_noise": 1.007}),
    ("euler", {"churn_per_step": 0.2}),
    ("euler-ancestral", {"eta": 1.0}),
    ("ddim", {"eta": 0.5}),
    ("heun", {}),
]


@pytest.mark.parametrize("model_name", ["gmm", "ideal", "gmm:cond=1"])
@pytest.mark.parametrize("solver,kw", STOCHASTIC)
def test_batch_size_invariance_bit_for_bit(model_name, solver, kw):
    model = diffbench.load(model_name)
    seeds = [3, 14, 15, 92, 65, 35, 89]
    one = diffbench.sample(model, seeds=seeds, solver=solver, nfe=9, batch=1, device="cpu", **kw)
    seven = diffbench.sample(model, seeds=seeds, solver=solver, nfe=9, batch=7, device="cpu", **kw)
    three = diffbench.sample(model, seeds=seeds, solver=solver, nfe=9, batch=3, device="cpu", **kw)
    assert torch.equal(one.images, seven.images) and torch.equal(one.images, three.images)
    if model.label_dim:
        assert torch.equal(one.class_labels, seven.class_labels)


def test_stream_order_is_edms():
    """latents (float32 C,H,W), then randint(label_dim), then one float64 normal per step."""
    seeds = [7, 7]  # (seeds >= 2^32 are refused: tests/test_seeds.py)
    src = NoiseSource(seeds)
    lat = src.latents((3, 4, 4))
    lab = src.labels(10)
    like = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    s0, s2 = src.step(0, like), src.step(2, like)  # step 1 is skipped: its draw is burnt
    g = torch.Generator().manual_seed(7)
    want_lat = torch.randn((3, 4, 4), generator=g)
    want_lab = torch.randint(10, (), generator=g)
    want0 = torch.randn((3, 4, 4), generator=g, dtype=torch.float64)
    torch.randn((3, 4, 4), generator=g, dtype=torch.float64)
    want2 = torch.randn((3, 4, 4), generator=g, dtype=torch.float64)
    for k in range(2):
        assert torch.equal(lat[k], want_lat) and lab[k] == want_lab
        assert torch.equal(s0[k], want0) and torch.equal(s2[k], want2)
    with pytest.raises(RuntimeError):
        src.step(1, like)


def test_latents_given_equal_latents_drawn(gmm):
    seeds = [5, 6, 7]
    z = NoiseSource(seeds).latents(gmm.sample_shape)
    a = diffbench.sample(gmm, seeds=seeds, solver="heun", nfe=11, S_churn=10.0, device="cpu")
    b = diffbench.sample(gmm, seeds=seeds, latents=z, solver="heun", nfe=11, S_churn=10.0, device="cpu")
    assert torch.equal(a.images, b.images)


def test_fixed_class_still_draws_the_label():
    """A fixed class overwrites the drawn label, so the step noise after it is the same stream."""
    model = diffbench.load("gmm:cond=1")
    a = diffbench.sample(model, seeds=[1, 2], solver="euler-ancestral", nfe=6, class_labels=2, device="cpu")
    assert a.class_labels.tolist() == [2, 2]
    src = NoiseSource([1])
    src.latents(model.sample_shape)
    drawn = int(src.labels(model.label_dim)[0])
    b = diffbench.sample(model, seeds=[1], solver="euler-ancestral", nfe=6, class_labels=drawn, device="cpu")
    c = diffbench.sample(model, seeds=[1], solver="euler-ancestral", nfe=6, device="cpu")
    assert torch.equal(b.images, c.images)


def test_initial_state_is_latents_times_sigma0(gmm):
    class Probe:
        sigma_min, sigma_max, img_channels, img_resolution, label_dim = 0.0, float("inf"), 3, 8, 0
        first = None

        def round_sigma(self, s):
            return torch.as_tensor(s)

        def __call__(self, x, sigma, class_labels=None):
            if Probe.first is None:
                Probe.first = (x.clone(), sigma.clone())
            return gmm(x, sigma)

    diffbench.sample(Probe(), seeds=[4], solver="euler", nfe=3, device="cpu")
    z = NoiseSource([4]).latents((3, 8, 8)).double()
    assert torch.equal(Probe.first[0], z * 80.0) and Probe.first[1].tolist() == [80.0]


def test_network_batch_invariance_to_float_tolerance(tiny_net):
    """With a real network (clean-room DDPM++, random weights) kernels may change with batch size: float tolerance."""
    model = tiny_net(label_dim=4)
    seeds = [3, 14, 15, 92, 65, 35, 89]
    kw = dict(solver="heun", nfe=9, S_churn=20.0, device="cpu")
    one = diffbench.sample(model, seeds=seeds, batch=1, **kw)
    seven = diffbench.sample(model, seeds=seeds, batch=7, **kw)
    assert torch.equal(one.class_labels, seven.class_labels)
    assert torch.allclose(one.images, seven.images, rtol=0, atol=1e-4)


def test_brownian_increments_are_one_path_whatever_the_query_order():
    from diffbench.sampling.noise import BrownianNoise

    like = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    a, b, c = 0.5, 2.0, 7.0
    fine = BrownianNoise([1, 2], sigma_min=0.002, sigma_max=80.0)
    first = fine.increment(0, c, b, like) * (c - b) ** 0.5  # W(c) - W(b)
    second = fine.increment(1, b, a, like) * (b - a) ** 0.5  # W(b) - W(a)
    coarse = BrownianNoise([1, 2], sigma_min=0.002, sigma_max=80.0).increment(0, c, a, like) * (c - a) ** 0.5
    assert torch.allclose(first + second, coarse, atol=1e-9)
    assert not torch.allclose(first[0], first[1])  # seeds differ


def test_draws_do_not_depend_on_the_default_dtype(gmm):
    """Latents float32, labels int64, step noise in the state's dtype, whatever torch's default dtype is."""
    kw = {"seeds": [0, 1, 2], "solver": "euler-ancestral", "nfe": 6, "device": "cpu"}
    want = diffbench.sample(gmm, **kw).images
    z = NoiseSource([0, 1, 2]).latents((3, 2, 2))
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = diffbench.sample(gmm, **kw).images
        z64 = NoiseSource([0, 1, 2]).latents((3, 2, 2))
        labels = NoiseSource([0, 1, 2])
        labels.latents((1,))
        drawn = labels.labels(10)
    finally:
        torch.set_default_dtype(old)
    assert z64.dtype == torch.float32 and torch.equal(z64, z)
    assert drawn.dtype == torch.int64
    assert torch.equal(got, want)


def test_float64_latents_stay_float64_in_a_float64_run(gmm):
    from diffbench.sampling.solvers import get_solver

    z = torch.randn((2, *gmm.sample_shape), dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out = diffbench.sample(gmm, latents=z, solver="euler", steps=4, device="cpu")
    sig = out.sigmas

    def D(x, s):
        return gmm(x, torch.full((x.shape[0],), float(s), dtype=torch.float64))

    want = get_solver("euler").fn(D, z * float(sig[0]), sig, noise=None)
    assert torch.allclose(out.images, want, rtol=0, atol=1e-13)
    rounded = get_solver("euler").fn(D, z.float().double() * float(sig[0]), sig, noise=None)
    assert not torch.allclose(out.images, rounded, rtol=0, atol=1e-10)
