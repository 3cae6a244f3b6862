"""The evaluator between solvers and networks: labels bound, evaluations counted per network per sample.

Solvers call it as D(x, sigma); a combine function makes one evaluation from counted network calls, so a
rule that calls two networks (or one network twice, batched) is counted honestly per network.
"""

from __future__ import annotations

import pytest
import torch

import diffbench
from diffbench.denoiser import MAIN, Evaluator, plain
from diffbench.errors import ConfigError
from diffbench.sampling.noise import NoiseSource
from diffbench.sampling.plan import plan
from diffbench.sampling.solvers import get_solver


class Net:
    """A duck-typed Denoiser that keeps what each call received."""

    sigma_min, sigma_max, img_channels, img_resolution = 0.002, 80.0, 1, 1
    sample_shape = (2,)

    def __init__(self, label_dim: int = 0, scale: float = 0.5):
        self.label_dim, self.scale = label_dim, scale
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def __call__(self, x, sigma, class_labels=None):
        self.calls.append((x.shape[0], sigma.clone(), None if class_labels is None else class_labels.clone()))
        return (self.scale * x / (1 + sigma.reshape(-1, 1) ** 2)).to(torch.float32)


def test_one_network_counts_one_evaluation_per_call_per_sample():
    net = Net()
    ev = Evaluator(net, 4)
    x = torch.ones(4, 2, dtype=torch.float64)
    for s in (3.0, 1.0, torch.full((4,), 0.5, dtype=torch.float64)):
        out = ev(x, s)
    assert ev.counts == {MAIN: 3.0} and ev.nfe == 3.0
    assert out.dtype == torch.float64  # D comes back in the solver's dtype
    assert all(s.dtype == torch.float64 and s.shape == (4,) for _, s, _ in net.calls)  # a float sigma per row


def test_bound_labels_reach_the_network_as_one_hot_rows():
    net = Net(label_dim=3)
    ev = Evaluator(net, 2, class_labels=torch.tensor([2, 0]))
    ev(torch.zeros(2, 2), 1.0)
    torch.testing.assert_close(net.calls[0][2], torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    uncond = Net()
    Evaluator(uncond, 2, class_labels=None)(torch.zeros(2, 2), 1.0)
    assert uncond.calls[0][2] is None


def test_a_combine_counts_each_network_and_each_batched_row():
    """Two networks in one evaluation count one each; the main one on 2B rows (bound and null label) counts 2."""
    main, other = Net(label_dim=3), Net(scale=0.25)

    def two(net, x, sigma):  # a test-local rule: the bound label and the null label in one batch, then `other`
        both = net(MAIN, torch.cat([x, x]), torch.cat([sigma, sigma]), labels=torch.tensor([1, 1, 1, 1]))
        return both[: x.shape[0]] + net("other", x, sigma, labels=None)

    ev = Evaluator({MAIN: main, "other": other}, 2, class_labels=torch.tensor([1, 2]), combine=two)
    ev(torch.ones(2, 2), 2.0)
    ev(torch.ones(2, 2), 1.0)
    assert ev.counts == {MAIN: 4.0, "other": 2.0} and ev.nfe == 6.0
    assert other.calls[0][2] is None and main.calls[0][2].shape == (4, 3)


def test_an_unknown_network_or_a_missing_main_one_is_refused():
    with pytest.raises(ConfigError, match="needs a 'main' network"):
        Evaluator({"other": Net()}, 1)
    ev = Evaluator(Net(), 1, combine=lambda net, x, sigma: net("guide", x, sigma))
    with pytest.raises(KeyError, match="no network 'guide'"):
        ev(torch.zeros(1, 2), 1.0)


def test_plain_is_the_main_network_with_the_bound_labels():
    net = Net(label_dim=2)
    ev = Evaluator(net, 1, class_labels=torch.tensor([1]), combine=plain)
    x = torch.randn(1, 2, dtype=torch.float64)
    torch.testing.assert_close(ev(x, 2.0), (0.5 * x / 5).to(torch.float32).to(torch.float64))


@pytest.mark.parametrize("solver", ["heun", "dpmpp-2m", "restart", "unipc"])
def test_a_solver_through_the_evaluator_spends_the_plans_nfe(solver):
    net = Net()
    info = get_solver(solver)
    p = plan(net, solver=solver, schedule="edm", steps=12)
    ev = Evaluator(net, 3)
    info.fn(ev, torch.ones(3, 2, dtype=torch.float64) * 80, p.sigmas, noise=NoiseSource([0, 1, 2]))
    assert ev.counts == {MAIN: float(p.nfe)} and sum(p.costs) == p.nfe


def test_conditional_samples_do_not_depend_on_the_batch_they_ran_in():
    model = diffbench.load("gmm:shape=2x3x3,cond=true")
    kw = {"seeds": range(5), "solver": "heun", "nfe": 9, "device": "cpu", "class_labels": [2, 0, 1, 1, 2]}
    one = diffbench.sample(model, batch=1, **kw)
    all_ = diffbench.sample(model, batch=5, **kw)
    torch.testing.assert_close(one.images, all_.images, rtol=0, atol=0)
    assert one.nfe == all_.nfe == 9 and one.class_labels.tolist() == [2, 0, 1, 1, 2]


def test_each_batch_reports_its_count_per_network():
    from diffbench.sampling.run import Sampler
    from diffbench.sampling.spec import SamplerSpec

    run = Sampler(diffbench.load("gmm:shape=2x3x3"), SamplerSpec.make(solver="dpmpp-2m", nfe=7), device="cpu")
    batch = run.run([0, 1, 2])
    assert batch.counts == {MAIN: 7.0} and batch.nfe == run.plan.nfe == 7
