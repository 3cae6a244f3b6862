"""The fid() API: equals the staged computation, seed blocks and their interval, compare_fid, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import images
from scipy import stats as sps

from diffbench.errors import ConfigError
from diffbench.metrics.fid import FIDResult, compare_fid, fid
from diffbench.metrics.frechet import frechet_distance
from diffbench.metrics.sources import source_from_array
from diffbench.metrics.stats import load_statistics, save_statistics, statistics_of

pytestmark = pytest.mark.usefixtures("home")  # an isolated DIFFBENCH_HOME (conftest.py)


class Proj:
    """A cheap deterministic extractor: a fixed random projection of the pixels."""

    def __init__(self, dim=6, pixels=3 * 4 * 4, seed=0, id="proj"):
        self.w = torch.randn(pixels, dim, generator=torch.Generator().manual_seed(seed))
        self.id = id

    def features(self, x):
        return (x.float() / 255).flatten(1) @ self.w


class Proj64(Proj):
    """Proj in float64, rounded once to float32: the same features whatever the batch's shape (a float32 matmul
    rounds differently per batch shape on some BLAS kernels; a float64 one stays ~1e-16 relative, so rounding it
    to float32 gives the same value except within 1e-16 of a rounding boundary, odds ~1e-9 per feature)."""

    def features(self, x):
        return ((x.double() / 255).flatten(1) @ self.w.double()).float()


class ProjWithLogits(Proj):
    def features_and_logits(self, x):
        f = self.features(x)
        return f, f[:, :4] * 3


def feats(ext, imgs):
    return ext.features(torch.from_numpy(imgs).permute(0, 3, 1, 2)).double().numpy()


@pytest.fixture()
def ref_file(tmp_path):
    ext = Proj()
    stats = statistics_of(source_from_array(images(300, seed=1)), extractor=ext, keep_features=True)
    return save_statistics(stats, tmp_path / "ref.npz")


def test_fid_equals_staged_computation(tmp_path, ref_file):
    ext, sample = Proj(), images(120, seed=2, hi=200)
    np.savez(tmp_path / "s.npz", images=sample)
    r = fid(tmp_path / "s.npz", ref=ref_file, extractor=ext, batch=17)
    # The same float32 features fid() saw: the extractor's float32 matmul rounds differently for another batch
    # shape on some BLAS kernels (120 rows at once against 7 x 17 + 1 gave 1e-8 relative in FID with MKL's AVX2
    # kernel), so the staged side is fed the same batches of 17, and the reference the features its file kept.
    f = np.concatenate([feats(ext, sample[i : i + 17]) for i in range(0, len(sample), 17)])
    g = load_statistics(ref_file).features.astype(np.float64)
    expected = frechet_distance(
        mu1=f.mean(0), sigma1=np.cov(f, rowvar=False), mu2=g.mean(0), sigma2=np.cov(g, rowvar=False)
    )
    # Both sides are now float64 from identical features: merged moments against numpy's two passes differ by
    # <= n * 2^-53 ~ 3e-14 relative (n <= 300), and FD = |dmu|^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) cancels traces of
    # 22 + 14 = 36 down to 2.8: 13x amplification, 4e-13 < 1e-10.
    assert r.fid == pytest.approx(expected, rel=1e-10)
    assert (r.n, r.extractor_id, r.ref_n, len(r.blocks), r.loo) == (120, "proj", 300, 1, ())


def test_same_images_give_zero_and_images_as_ref(ref_file):
    sample = images(300, seed=1)
    assert fid(sample, ref=ref_file, extractor=Proj()).fid == pytest.approx(0, abs=1e-9)
    assert fid(sample, ref=sample, extractor=Proj()).fid == pytest.approx(0, abs=1e-9)


def _fd(ext, sample, g):
    f = feats(ext, sample)
    return frechet_distance(
        mu1=f.mean(0), sigma1=np.cov(f, rowvar=False), mu2=g.mean(0), sigma2=np.cov(g, rowvar=False)
    )


def test_the_value_is_the_fid_of_all_samples_with_a_jackknife_interval_over_disjoint_blocks(ref_file):
    # issue 20: value = FD of all N; loo = FD without each block; interval value ± t_{K−1}·SE_jack
    ext, sample = Proj64(), images(90, seed=3, hi=220)  # features independent of the batch shape (see Proj64)
    r = fid(sample, ref=ref_file, extractor=ext, blocks=3)
    g = load_statistics(ref_file).features.astype(np.float64)  # the reference's own float32 features (see above)
    per = [_fd(ext, sample[30 * b : 30 * (b + 1)], g) for b in range(3)]
    loo = [_fd(ext, np.concatenate([sample[30 * j : 30 * (j + 1)] for j in range(3) if j != b]), g) for b in range(3)]
    np.testing.assert_allclose(r.blocks, per, rtol=1e-8)
    np.testing.assert_allclose(r.loo, loo, rtol=1e-8)
    assert r.fid == pytest.approx(_fd(ext, sample, g), rel=1e-8) and r.n == 90 and r.block_n == 30
    se = math.sqrt(2 / 3 * sum((v - np.mean(loo)) ** 2 for v in loo))
    half = sps.t.ppf(0.975, 2) * se
    assert r.se == pytest.approx(se, rel=1e-8)
    assert (r.ci_low, r.ci_high) == pytest.approx((r.fid - half, r.fid + half), rel=1e-8)
    assert r.fid_inf == pytest.approx(3 * r.fid - 2 * np.mean(loo), rel=1e-8)
    with pytest.raises(ConfigError, match="retired"):
        fid(sample, ref=ref_file, extractor=ext, blocks=3, shown="min")


def test_optional_metrics(ref_file):
    r = fid(
        images(60, seed=4),
        ref=ref_file,
        extractor=ProjWithLogits(),
        kid=True,
        precision_recall=True,
        inception_score=True,
        kid_subset_size=50,
        kid_subsets=5,
    )
    assert set(r.extras) == {"kid_mean", "kid_std", "precision", "recall", "is_mean", "is_std"}
    assert 0 <= r.extras["precision"] <= 1 and r.extras["is_mean"] >= 1


def test_samples_straight_from_a_sampler_spec(gmm):
    """The cell runner (what `fid --model` and sweeps use) scores the images `sample` would write."""
    from diffbench.sampling.run import sample
    from diffbench.sampling.spec import SamplerSpec
    from diffbench.sweep.cell import fid_of_spec

    ext = Proj64(pixels=3 * 8 * 8)  # the two paths batch differently (8 here, 100 in fid)
    ref = sample(gmm, seeds=range(1000, 1100), solver="heun", nfe=35, device="cpu").images
    spec = SamplerSpec.make(solver="heun", nfe=7)
    direct = fid_of_spec(gmm, spec=spec, seeds=range(20), ref=ref, extractor=ext, blocks=2, device="cpu", batch=8)
    written = sample(gmm, seeds=range(20), solver="heun", nfe=7, device="cpu").images
    assert direct.blocks == pytest.approx(fid(written, ref=ref, extractor=ext, blocks=2).blocks, rel=1e-12)
    assert direct.samples["nfe_counted"] == 7
    # a stream of sampler records works too (one block)
    from diffbench.sampling.run import iter_batches

    stream = iter_batches(gmm, seeds=range(20), solver="heun", nfe=7, device="cpu", batch=6)
    assert fid(stream, ref=ref, extractor=ext).fid == pytest.approx(fid(written, ref=ref, extractor=ext).fid)


def result(value, loo, n=1000, seeds=None):
    from diffbench.metrics.jackknife import jackknife

    j = jackknife(value, loo)
    return FIDResult(
        fid=value,
        n=n,
        blocks=(),
        block_n=None,
        loo=tuple(loo),
        se=j.se,
        ci_low=j.ci_low,
        ci_high=j.ci_high,
        fid_inf=j.bias_corrected,
        inf_low=j.bc_low,
        inf_high=j.bc_high,
        confidence=0.95,
        extractor_id="x",
        ref=None,
        ref_sha256="r",
        ref_n=None,
        samples={} if seeds is None else {"seeds": seeds},
    )


def test_compare_fid_is_the_paired_jackknife_for_shared_seeds_and_says_which_test_ran():
    # replaces the Welch test over block FIDs (issue 20): cells drawn from the same seeds are paired
    a = result(3.0, [3.1, 2.9, 3.05, 2.95], seeds="0-99")
    b = result(3.5, [3.62, 3.38, 3.56, 3.44], seeds="0-99")  # the same block pattern: a real gap of 0.5
    c = compare_fid(a, b)
    assert c.significant and c.test.startswith("paired") and c.verdict.startswith("a is better")
    assert c.difference == pytest.approx(-0.5)
    # without shared seeds the same numbers are compared unpaired, and it says so; the gap is within noise
    u = compare_fid(result(3.0, a.loo), result(3.5, b.loo))
    assert u.test.startswith("unpaired") and not u.significant and u.verdict.startswith("within noise")
    assert compare_fid(result(3.0, []), result(4.0, [])).verdict.startswith("unknown")
    with pytest.raises(ConfigError, match="different n"):
        compare_fid(result(3.0, [3.1, 2.9]), result(3.0, [3.1, 2.9], n=500))
    with pytest.raises(ConfigError, match="same seed blocks"):
        compare_fid(result(3.0, [3.1, 2.9]), result(3.0, [3.1, 2.9, 3.0]), paired=True)


def test_bad_inputs_are_one_line_errors(tmp_path, ref_file):
    sample = images(60, seed=5)
    with pytest.raises(ConfigError, match="extractor 'proj', samples from 'other'"):
        fid(sample, ref=ref_file, extractor=Proj(seed=1, id="other"))
    with pytest.raises(ConfigError, match="different resolution"):
        fid(images(60, seed=5, size=8), ref=ref_file, extractor=Proj(pixels=3 * 8 * 8))
    with pytest.raises(ConfigError, match="needs at least 7"):
        fid(images(5), ref=ref_file, extractor=Proj())
    assert math.isfinite(fid(images(5), ref=ref_file, extractor=Proj(), allow_small_n=True).fid)
    with pytest.raises(ConfigError, match="do not split into 7"):
        fid(sample, ref=ref_file, extractor=Proj(), blocks=7, allow_small_n=True)
    with pytest.raises(ConfigError, match="larger than the 60 images"):
        fid(sample, ref=ref_file, extractor=Proj(), blocks=61, allow_small_n=True)
    # a block may hold fewer samples than the feature dimension; a leave-one-out set may not
    assert fid(images(20), ref=ref_file, extractor=Proj(), blocks=4).block_n == 5
    with pytest.raises(ConfigError, match="leave 5 samples in each leave-one-block-out set.*at least 14 seeds"):
        fid(images(10), ref=ref_file, extractor=Proj(), blocks=2)
    np.savez(tmp_path / "edm.npz", mu=np.zeros(6), sigma=np.eye(6))
    with pytest.raises(ConfigError, match="--keep-features"):
        fid(sample, ref=tmp_path / "edm.npz", extractor=Proj(), kid=True)
    with pytest.raises(ConfigError, match="no logits"):
        fid(sample, ref=ref_file, extractor=Proj(), inception_score=True)
    np.savez(tmp_path / "nan.npz", mu=np.full(6, np.nan), sigma=np.eye(6))
    with pytest.raises(ConfigError, match="NaN or Inf"):
        fid(sample, ref=tmp_path / "nan.npz", extractor=Proj())
    with pytest.raises(ConfigError, match="8-d features, samples 6-d"):
        np.savez(tmp_path / "d8.npz", mu=np.zeros(8), sigma=np.eye(8))
        fid(sample, ref=tmp_path / "d8.npz", extractor=Proj())


def test_package_exposes_the_fid_function(ref_file):
    import diffbench.metrics

    r = diffbench.metrics.fid(images(300, seed=1), ref=ref_file, extractor=Proj())
    assert r.fid == pytest.approx(0, abs=1e-9) and diffbench.metrics.compare_fid is compare_fid


def test_moments_only_files_on_both_sides(tmp_path):
    # EDM's npz layout on both sides: no n, no extractor id; FD of two Gaussians, closed form (1-D per axis)
    np.savez(tmp_path / "a.npz", mu=np.zeros(3), sigma=np.diag([1.0, 4.0, 9.0]))
    np.savez(tmp_path / "b.npz", mu=np.ones(3), sigma=np.diag([4.0, 4.0, 4.0]))
    r = fid(tmp_path / "a.npz", ref=tmp_path / "b.npz")
    assert r.fid == pytest.approx(3 + (1 - 2) ** 2 + 0 + (3 - 2) ** 2, rel=1e-12)
    assert r.n is None and r.extractor_id is None


def test_small_n_is_refused_before_any_feature_is_computed(ref_file):
    class Counting(Proj):
        calls = 0

        def features(self, x):
            Counting.calls += 1
            return super().features(x)

    with pytest.raises(ConfigError, match="needs at least 7"):
        fid(images(10), ref=ref_file, extractor=Counting(), blocks=2)
    assert Counting.calls == 0
