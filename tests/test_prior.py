"""Auxiliary priors (issue 22): fitting, files, densities, per-seed draws, the --prior start and prior-kl."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import one_error_line

from diffbench.errors import ConfigError
from diffbench.priors import (
    DataSet,
    GaussianMixturePrior,
    IdealPrior,
    fit_gaussian,
    fit_gmm,
    load_data,
    load_prior,
    noised_data_log_density,
    save_prior,
)
from diffbench.sampling.initial import GAUSSIAN, initial_state
from diffbench.sampling.noise import NoiseSource


def _data(x: torch.Tensor, shape=(1, 1, 2)) -> DataSet:
    return DataSet(x=x.to(torch.float64), shape=shape, label="test", sha256="0" * 64)


def _clusters(n: int = 400, seed: int = 0) -> DataSet:
    """Two well separated 2-d clusters, weights 0.25 / 0.75, stds 0.1 and 0.2."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n // 4, 2, generator=g, dtype=torch.float64) * 0.1 + torch.tensor([-0.5, 0.5], dtype=torch.float64)
    b = torch.randn(3 * n // 4, 2, generator=g, dtype=torch.float64) * 0.2 + torch.tensor([0.5, -0.5])
    return _data(torch.cat([a, b]))


def test_em_recovers_a_two_component_mixture():
    p = fit_gmm(_clusters(), 1.0, 2, reg=1e-8)
    order = torch.argsort(p.weights)
    w, mu, cov = p.weights[order], p.means[order], p.covs[order]
    assert torch.allclose(w, torch.tensor([0.25, 0.75], dtype=torch.float64), atol=1e-3)
    assert torch.allclose(mu, torch.tensor([[-0.5, 0.5], [0.5, -0.5]], dtype=torch.float64), atol=0.05)
    assert torch.allclose(
        torch.diagonal(cov, dim1=1, dim2=2).sqrt(), torch.tensor([[0.1] * 2, [0.2] * 2]).double(), rtol=0.2
    )
    assert p.meta["fit"]["converged"] and p.kind == "gmm:2" and p.sigma == 1.0


def test_gaussian_fit_is_the_data_moments_and_log_prob_matches_torch():
    d = _clusters()
    p = fit_gaussian(d, 0.5)
    r = d.x - d.x.mean(0)
    assert torch.allclose(p.covs[0], r.T @ r / d.n) and torch.allclose(p.means[0], d.x.mean(0))
    mvn = torch.distributions.MultivariateNormal(p.means[0], p.covs[0] + 0.25 * torch.eye(2, dtype=torch.float64))
    x = torch.randn(7, 2, dtype=torch.float64)
    assert torch.allclose(p.log_prob(x), mvn.log_prob(x))
    m = fit_gmm(d, 0.5, 2)
    comps = [
        torch.distributions.MultivariateNormal(m.means[j], m.covs[j] + 0.25 * torch.eye(2, dtype=torch.float64))
        for j in range(2)
    ]
    want = torch.logsumexp(torch.stack([c.log_prob(x) + torch.log(m.weights[j]) for j, c in enumerate(comps)]), 0)
    assert torch.allclose(m.log_prob(x), want)


def test_noised_data_log_density_is_the_gaussian_mixture_of_the_data():
    data = torch.randn(50, 3, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    sigma = 0.7
    comps = torch.distributions.MultivariateNormal(data, sigma**2 * torch.eye(3, dtype=torch.float64))
    want = torch.logsumexp(comps.log_prob(x[:, None, :]), 1) - math.log(50)
    assert torch.allclose(noised_data_log_density(x, data, sigma, chunk=7), want)


def test_a_prior_file_round_trips_and_bad_files_are_one_line(tmp_path):
    p = fit_gmm(_clusters(), 2.0, 2)
    path = tmp_path / "p.npz"
    digest = save_prior(p, path)
    q = load_prior(path)
    assert q.sha256 == digest and q.sigma == 2.0 and q.kind == "gmm:2" and q.shape == (1, 1, 2)
    assert torch.equal(q.means, p.means) and torch.equal(q.covs, p.covs)
    assert q.meta["fit"]["k"] == 2 and q.meta["data_sha256"] == "0" * 64
    assert save_prior(p, tmp_path / "again.npz") == digest  # one prior, one file, one sha256
    with np.load(path) as z:
        good = dict(z)
    for change, match in (
        ({"format": np.asarray("other/1")}, "not a diffbench prior"),
        ({"sigma": np.asarray(-1.0)}, "sigma must be"),
        ({"means": np.zeros((2, 3))}, "do not fit"),
        ({"weights": np.asarray([0.9, 0.3])}, "not a distribution"),
        ({"covs": -np.ones((2, 2, 2)) * np.eye(2) * 10}, "not positive definite"),
    ):
        bad = tmp_path / "bad.npz"
        np.savez(bad, **{**good, **change})
        with pytest.raises(ConfigError, match=match):
            load_prior(bad)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="not a prior npz"):
        load_prior(tmp_path / "junk.npz")


def test_too_few_images_for_the_mixture_say_how_many_are_needed():
    with pytest.raises(ConfigError, match=r"has 10 images; gmm:4 .* needs at least 12 \(K x \(D \+ 1\) = 4 x 3\)"):
        fit_gmm(_data(torch.randn(10, 2)), 1.0, 4)
    with pytest.raises(ConfigError, match=r"has 2 images; a gaussian prior's full 2x2 covariance needs at least 3"):
        fit_gaussian(_data(torch.randn(2, 2)), 1.0)
    assert fit_gaussian(_data(torch.randn(3, 2)), 1.0).k == 1  # D + 1 is enough


def test_draws_are_per_seed_batch_size_invariant_and_share_the_gaussian_latents():
    p = fit_gmm(_clusters(), 1.5, 2)
    seeds = list(range(10))
    whole = p.draw(NoiseSource(seeds), 1.5, (1, 1, 2), torch.float64)
    parts = torch.cat([p.draw(NoiseSource(seeds[i : i + 3]), 1.5, (1, 1, 2), torch.float64) for i in range(0, 10, 3)])
    assert torch.equal(whole, parts)
    z = GAUSSIAN.draw(NoiseSource(seeds), 1.0, (1, 1, 2), torch.float64).flatten(1)  # the stream's first draw
    k = p.components(seeds, torch.device("cpu"))
    assert len(set(k.tolist())) == 2  # both components are drawn
    x = whole.flatten(1)
    assert torch.allclose(x, p.means[k] + torch.einsum("bij,bj->bi", p.chol()[k], z))
    digits = fit_gmm(load_data("digits-data"), 1.0, 3)  # 64-d: a batch-invariant product, not a batched matmul
    seeds = list(range(12))
    whole = digits.draw(NoiseSource(seeds), 1.0, (1, 8, 8), torch.float64)
    parts = [digits.draw(NoiseSource(seeds[i : i + 5]), 1.0, (1, 8, 8), torch.float64) for i in range(0, 12, 5)]
    assert torch.equal(whole, torch.cat(parts))
    ideal = IdealPrior(_clusters())
    a = ideal.draw(NoiseSource(seeds), 0.3, (1, 1, 2), torch.float64)
    b = torch.cat([ideal.draw(NoiseSource([s]), 0.3, (1, 1, 2), torch.float64) for s in seeds])
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="a prior at sigma 1.5, asked to start at sigma 2"):
        p.draw(NoiseSource(seeds), 2.0, (1, 1, 2), torch.float64)


def test_mixture_draws_follow_the_mixture():
    p = fit_gmm(_clusters(), 0.1, 2)
    x = p.draw(NoiseSource(range(4000)), 0.1, (1, 1, 2), torch.float64).flatten(1)
    mean = (p.weights[:, None] * p.means).sum(0)
    assert torch.allclose(x.mean(0), mean, atol=0.03)


# ---- prior-kl --------------------------------------------------------------------------------------------


def _as_mixture(normal, sigma):
    """N(0, sigma^2 I) in 2-d as a two-component mixture of equal halves: a start without the Gaussian shortcut."""
    zero = torch.zeros(2, 2, dtype=torch.float64)
    w = torch.tensor([0.5, 0.5], dtype=torch.float64)
    return GaussianMixturePrior(w, zero, torch.zeros(2, 2, 2, dtype=torch.float64), sigma, (1, 1, 2))


def test_prior_kl_of_one_point_is_the_closed_form_and_the_bound_is_tight():
    from diffbench.metrics.prior_kl import log_ratios, upper_bound

    x0 = torch.tensor([[0.6, -0.8]], dtype=torch.float64)  # |x0|^2 = 1
    sigma = 0.5
    r = log_ratios(x0, sigma, GAUSSIAN, range(100))
    exact = 1.0 / (2 * sigma**2)  # p_sigma = N(x0, s^2 I): KL = |x0|^2 / (2 s^2), every summand exact
    torch.testing.assert_close(r, torch.full((100,), exact, dtype=torch.float64))
    # the plain summands log p - log q (any start; here an equal one-component mixture) agree within MC error
    plain = log_ratios(x0, sigma, _as_mixture(GAUSSIAN, sigma), range(4000))
    assert abs(float(plain.mean()) - exact) < 4 * float(plain.std()) / math.sqrt(4000)
    assert upper_bound(x0, sigma, GAUSSIAN) == pytest.approx(exact)
    g = fit_gaussian(_data(torch.tensor([[0.1, 0.2], [0.3, -0.1], [-0.2, 0.4]], dtype=torch.float64)), sigma)
    q = torch.distributions.MultivariateNormal(g.means[0], g.covs[0] + sigma**2 * torch.eye(2, dtype=torch.float64))
    p = torch.distributions.MultivariateNormal(x0[0], sigma**2 * torch.eye(2, dtype=torch.float64))
    assert upper_bound(x0, sigma, g) == pytest.approx(float(torch.distributions.kl_divergence(p, q)))


def test_prior_kl_is_zero_for_the_ideal_prior_and_below_the_bound():
    from diffbench.metrics.prior_kl import log_ratios, upper_bound

    d = _clusters()
    assert torch.equal(log_ratios(d.x, 0.3, IdealPrior(d), range(50)), torch.zeros(50, dtype=torch.float64))
    r = log_ratios(d.x, 0.3, GAUSSIAN, range(500))
    assert float(r.mean()) + 4 * float(r.std()) / math.sqrt(500) < upper_bound(d.x, 0.3, GAUSSIAN)
    g = fit_gmm(d, 0.3, 2)
    assert float(log_ratios(d.x, 0.3, g, range(500)).mean()) < 0.1 * float(r.mean())


def test_prior_kl_in_a_cell_with_a_fitted_and_the_ideal_prior(tmp_path):
    """Through the cell runner: each seed's summand, the start from the cell (not from the sampler import)."""
    from diffbench.sampling.spec import SamplerSpec
    from diffbench.sweep.cell import prepare, run_cell
    from diffbench.sweep.identity import cell_identity

    prior = fit_gaussian(load_data("digits-data"), 1.0)
    path = tmp_path / "g.npz"
    save_prior(prior, path)
    bench = prepare("digits-edm", seeds=range(8), metrics=["prior-kl"], blocks=2, batch=3, device="cpu")
    assert bench.kl_data == "digits-data"
    cells = {}
    for p in (None, f"file:{path}", "ideal:digits-data"):
        spec = SamplerSpec.make(solver="euler", nfe=1, sigma_max=1.0, prior=p)
        cells[p] = (run_cell(bench, spec).metrics["prior-kl"], cell_identity(bench, spec, None))
    normal, fitted, ideal = (cells[k][0] for k in cells)
    assert ideal["value"] == 0.0 and normal["value"] > 5 * max(fitted["value"], 0.1)  # MC: tiny KLs may be < 0
    assert normal["bound"] > normal["value"] and fitted["bound"] > fitted["value"] and ideal["bound"] is None
    assert normal["mc_se"] < 0.1 * normal["value"] and ideal["mc_se"] == 0
    assert normal["start"] == "normal" and fitted["start"] == "gaussian" and ideal["start"] == "ideal"
    files = [cells[k][1][1]["files_read"] for k in cells]
    assert "prior" not in files[0] and files[1]["prior"] == prior_file_sha(path)
    assert files[2]["prior"] == load_data("digits-data").sha256 and files[0]["kl-data"] == files[2]["prior"]


def prior_file_sha(path) -> str:
    from diffbench.metrics.sources import file_sha256

    return file_sha256(path)


def test_sampling_from_a_prior_is_batch_size_invariant():
    from diffbench.models.load import load
    from diffbench.sampling.run import sample

    model = load("digits-edm", device="cpu")
    kw = dict(solver="euler", nfe=2, sigma_max=3.0, prior="ideal:digits-data", device="cpu")
    a = sample(model, seeds=range(5), batch=5, **kw)
    b = sample(model, seeds=range(5), batch=2, **kw)
    # the start exactly; the images up to the float32 network's batch-dependent rounding (as for N(0, s^2 I))
    start = [initial_state(NoiseSource(s), a.plan, (1, 8, 8), prior=IdealPrior(load_data("digits-data"))) for s in
             ([0, 1, 2, 3, 4], [0, 1], [2, 3], [4])]  # fmt: skip
    assert torch.equal(start[0], torch.cat(start[1:]))
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=1e-5)
    assert a.provenance["prior"]["kind"] == "ideal"


# ---- the commands ------------------------------------------------------------------------------------------


def test_fit_prior_and_every_bad_prior_input_through_the_command(cli, tmp_path):
    out = tmp_path / "g.npz"
    code, stdout, err = cli("fit-prior", "digits-data", "--sigma", "2", "-o", out)
    assert code == 0 and "gaussian at sigma 2 of 1500 images [1, 8, 8]" in stdout, err
    # a prior of 3-channel images, for a shape mismatch
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, images=np.random.default_rng(0).integers(0, 256, (300, 8, 8, 3), dtype=np.uint8))
    code, _, err = cli("fit-prior", rgb, "--sigma", "2", "-o", tmp_path / "rgb-prior.npz")
    assert code == 0, err
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"no")
    few = tmp_path / "few.npz"  # 10 images of 64 dims: too few for a full 64x64 covariance, gaussian or gmm:1
    np.savez(few, images=np.random.default_rng(1).integers(0, 256, (10, 8, 8, 1), dtype=np.uint8))
    grid = tmp_path / "grid.txt"
    grid.write_text("5\n1\n0\n")  # a file schedule that starts above the prior's sigma
    s = ("sample", "digits-edm", "--solver", "euler", "--nfe", "1", "--seeds", "0-1", "--device", "cpu")
    bad = [
        (("fit-prior", "digits-data:heldout", "--sigma", "2", "--kind", "gmm:10", "-o", tmp_path / "x.npz"),
         "has 297 images; gmm:10 with full 64x64 covariances needs at least 650"),
        (("fit-prior", "digits-data", "--sigma", "2", "--kind", "gmm:x", "-o", tmp_path / "x.npz"), "--kind 'gmm:x'"),
        (("fit-prior", few, "--sigma", "5", "--kind", "gaussian", "-o", tmp_path / "x.npz"),
         "has 10 images; a gaussian prior's full 64x64 covariance needs at least 65"),
        (("fit-prior", few, "--sigma", "5", "--kind", "gmm:1", "-o", tmp_path / "x.npz"), "needs at least 65"),
        (("fit-prior", "digits-data", "--sigma", "0", "-o", tmp_path / "x.npz"), "--sigma must be"),
        (("fit-prior", "digits-data", "--sigma", "2", "-o", out), "already exists"),
        ((*s, "--prior", f"file:{out}", "-o", tmp_path / "a.npz"),
         "a prior at sigma 2, but the plan starts at sigma 80"),
        ((*s, "--sigma-max", "2", "--prior", f"file:{tmp_path / 'rgb-prior.npz'}", "-o", tmp_path / "a.npz"),
         "a prior of images [3, 8, 8], but the model makes [1, 8, 8]"),
        ((*s, "--sigma-max", "2", "--prior", f"file:{junk}", "-o", tmp_path / "a.npz"), "not a prior npz"),
        ((*s, "--sigma-max", "2", "--prior", "file:", "-o", tmp_path / "a.npz"), "give file:PRIOR.npz"),
        ((*s, "--nfe", "2", "--schedule", f"file:{grid}", "--prior", f"file:{out}", "-o", tmp_path / "a.npz"),
         "a prior at sigma 2, but the file grid"),
        ((*s, "--nfe", "2", "--schedule", f"file:{grid}", "--sigma-max", "2", "-o", tmp_path / "a.npz"),
         "--sigma-max does not apply to a file grid, whose sigmas are fixed (5 .. 1"),
    ]  # fmt: skip
    for args, match in bad:
        code, _, err = cli(*args)
        assert match in one_error_line(code, err, context=True), (args, err)
    assert not (tmp_path / "a.npz").exists() and not (tmp_path / "x.npz").exists()
    code, _, err = cli(*s, "--sigma-max", "2", "--prior", f"file:{out}", "-o", tmp_path / "ok.npz")
    assert code == 0 and (tmp_path / "ok.npz").exists(), err


def test_sigma_max_outside_a_trained_range_names_the_range(tiny_net):
    from diffbench.models.precond import VEPrecond
    from diffbench.sampling.run import Sampler
    from diffbench.sampling.spec import SamplerSpec

    model = tiny_net(VEPrecond)
    with pytest.raises(ConfigError, match=r"sigma_max 200.0 is outside the model's sigma range \[0.02, 100\]"):
        Sampler(model, SamplerSpec.make(nfe=9, sigma_max=200.0), device="cpu")


def test_sweep_marks_the_ideal_prior_and_records_prior_kl(cli, tmp_path):
    code, stdout, err = cli(
        "sweep", "digits-edm", "--solver", "euler", "--nfe", "1", "--sigma-max", "2",
        "--prior", "ideal:digits-data", "--seeds", "0-3", "--blocks", "2", "--metric", "prior-kl",
        "--store", tmp_path / "s.db", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert "copies the data" in stdout


def test_the_gaussian_shortcut_and_the_plain_estimator_agree():
    from diffbench.metrics.prior_kl import log_ratios

    d = _clusters()
    rb = log_ratios(d.x, 0.3, GAUSSIAN, range(2000))
    plain = log_ratios(d.x, 0.3, _as_mixture(GAUSSIAN, 0.3), range(2000))
    se = math.hypot(float(rb.std()), float(plain.std())) / math.sqrt(2000)
    assert abs(float(rb.mean()) - float(plain.mean())) < 4 * se and float(rb.std()) < float(plain.std())


def test_prior_kl_needs_data_of_the_models_shape():
    from diffbench.sweep.cell import prepare

    with pytest.raises(ConfigError, match="prior-kl needs the data set the model was trained on: give --kl-data"):
        prepare("gmm", seeds=range(4), metrics=["prior-kl"], device="cpu")
    with pytest.raises(ConfigError, match=r"prior-kl: the data digits-data:train are images \[1, 8, 8\], the model"):
        prepare("gmm", seeds=range(4), metrics=["prior-kl"], device="cpu", kl_data="digits-data")


def test_both_spellings_of_the_shipped_digits_name_one_split(cli, tmp_path):
    from diffbench.priors import builtin_split, load_data

    assert builtin_split("digits") == builtin_split("digits-data") == "train"
    assert builtin_split("digits", default="heldout") == "heldout" and builtin_split("./digits") is None
    assert load_data("digits:heldout").sha256 == load_data("digits-data:heldout").sha256
    assert load_data("digits").n == load_data("digits-data:train").n
    code, out, err = cli("fit-prior", "digits:heldout", "--sigma", "5", "-o", tmp_path / "p.npz")
    assert code == 0 and "digits-data:heldout" in out + err, err
    code, _, err = cli("fit-prior", tmp_path / "nope", "--sigma", "5", "-o", tmp_path / "q.npz")
    assert "digits[:train|heldout|all]" in one_error_line(code, err) and code == 2
