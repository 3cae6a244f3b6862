"""Reference-solution error: Heun's second order against scipy, the long-Heun reference, the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffbench.errors import ConfigError
from diffbench.metrics.reference_error import heun_reference
from diffbench.sweep.cell import reference_error

pytestmark = pytest.mark.usefixtures("home")  # an isolated DIFFBENCH_HOME (conftest.py)


def spec(**kw):
    from diffbench.sampling.spec import SamplerSpec

    return SamplerSpec.make(**kw)


def test_heun_error_falls_as_nfe_squared(small_gmm):
    # Heun is second order (EDM Sec. 3): doubling the steps divides the global error by ~4
    nfes = [33, 65, 129]
    errs = [
        reference_error(small_gmm, spec=spec(solver="heun", nfe=n), seeds=range(12), device="cpu").rms for n in nfes
    ]
    slope = np.polyfit(np.log([(n + 1) / 2 for n in nfes]), np.log(errs), 1)[0]
    assert -2.6 < slope < -1.6, (errs, slope)
    # and Euler is first order
    e = [reference_error(small_gmm, spec=spec(solver="euler", nfe=n), seeds=range(12)).rms for n in (64, 128)]
    assert 1.6 < e[0] / e[1] < 2.5


def test_long_heun_reference_agrees_with_scipy(small_gmm):
    from diffbench.models.analytic import reference_solution

    x0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    exact = reference_solution(small_gmm, x0, sigma_from=80.0, sigma_to=0.002, rtol=1e-10, atol=1e-10)
    long = heun_reference(small_gmm, x0, sigma_from=80.0, sigma_to=0.002, class_labels=None, steps=1024)
    assert float((long - exact).pow(2).mean().sqrt()) < 1e-5 * float(exact.pow(2).mean().sqrt())


def test_reference_is_cached_per_latents_and_range(small_gmm, home):
    a = reference_error(small_gmm, spec=spec(solver="heun", nfe=9), seeds=range(5))
    b = reference_error(small_gmm, spec=spec(solver="heun", nfe=17), seeds=range(5))
    assert (a.cached, b.cached) == (0, 5) and len(list((home / "reference").iterdir())) == 1
    c = reference_error(small_gmm, spec=spec(solver="heun", nfe=17), seeds=range(5), cache=False)
    assert c.rms == pytest.approx(b.rms, rel=1e-12) and b.nfe == 17 and b.reference.startswith("scipy")
    other = reference_error(small_gmm, spec=spec(solver="heun", nfe=17, sigma_max=40.0), seeds=range(5))
    assert other.cached == 0 and other.sigma_from == pytest.approx(40.0)


def test_sigma_min_endpoint_compares_at_sigma_min(small_gmm):
    r = reference_error(small_gmm, spec=spec(solver="heun", nfe=16, endpoint="sigma_min"), seeds=range(4))
    assert r.sigma_to == pytest.approx(0.002) and np.isfinite(r.rms) and r.rms > 0


def test_stochastic_samplers_are_refused(small_gmm):
    with pytest.raises(ConfigError, match="deterministic sampler"):
        reference_error(small_gmm, spec=spec(solver="heun", nfe=9, S_churn=10.0), seeds=range(2))
    with pytest.raises(ConfigError, match="stochastic"):
        reference_error(small_gmm, spec=spec(solver="euler-ancestral", nfe=9), seeds=range(2))


class Network(torch.nn.Module):
    """The mixture behind a plain module: reference_error then takes the long-Heun path, as for a network."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        for k in ("sigma_min", "sigma_max", "img_channels", "img_resolution", "label_dim", "sample_shape"):
            setattr(self, k, getattr(inner, k))

    def round_sigma(self, sigma):
        return self.inner.round_sigma(sigma)

    def forward(self, x, sigma, class_labels=None):
        return self.inner(x, sigma, class_labels)


def test_networks_use_a_long_heun_reference_that_agrees_with_scipy(small_gmm):
    s = spec(solver="euler", nfe=12)
    exact = reference_error(small_gmm, spec=s, seeds=range(6), cache=False)
    net = reference_error(Network(small_gmm), spec=s, seeds=range(6), ref_steps=256, cache=False)
    assert net.reference == "heun 256 steps, rho 7" and exact.reference.startswith("scipy")
    assert net.rms == pytest.approx(exact.rms, rel=1e-3)
