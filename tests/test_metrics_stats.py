"""Statistics files: round trip, EDM npz and torch-fidelity caches, the source cache, and bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import images

from diffbench.errors import ConfigError
from diffbench.metrics.sources import source_from_array
from diffbench.metrics.stats import (
    cached_statistics,
    extract,
    load_statistics,
    save_statistics,
    statistics_of,
)

pytestmark = pytest.mark.usefixtures("home")  # an isolated DIFFBENCH_HOME (conftest.py)


class Proj:
    """A cheap deterministic extractor: a fixed random projection of the pixels; counts its calls."""

    def __init__(self, dim=6, pixels=3 * 4 * 4, seed=0, id="proj"):
        self.w = torch.randn(pixels, dim, generator=torch.Generator().manual_seed(seed))
        self.id, self.calls = id, 0

    def features(self, x):
        self.calls += 1
        return (x.float() / 255).flatten(1) @ self.w


def test_statistics_match_numpy_and_round_trip(tmp_path):
    ext = Proj()
    imgs = images(40)
    stats = statistics_of(source_from_array(imgs), extractor=ext, batch=7, keep_features=True, sha256="abc")
    x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).double() / 255).flatten(1).numpy()
    exact = x @ ext.w.double().numpy()
    # The kept features are the extractor's float32 features: each is a 48-term float32 dot product, whose
    # rounding depends on the batch's shape and the CPU's BLAS kernel (batches of 7 here), bounded by
    # gamma_48 * sum|x||w| with gamma_n = n u / (1 - n u), u = 2^-24 (Higham, Thm 3.5), plus 1 u for the x / 255.
    u = 2.0**-24
    bound = (48 * u / (1 - 48 * u) + u) * (np.abs(x) @ np.abs(ext.w.double().numpy()))
    assert (np.abs(stats.features - exact) <= bound).all()
    # mu and Sigma are the float64 moments of exactly those features, merged over batches of 7: n = 40 float64
    # additions in another order differ by <= 40 * 2^-53 = 4.4e-15 relative (rtol 1e-12); Sigma's smallest entry
    # (0.024 beside variances up to 4.4) loses up to 4.4 / 0.024 = 180x of that to cancellation: 8e-13 < 1e-10.
    f = stats.features.astype(np.float64)
    np.testing.assert_allclose(stats.mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(f, rowvar=False), rtol=1e-10, atol=1e-12)
    path = save_statistics(stats, tmp_path / "s.npz")
    back = load_statistics(path)
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    np.testing.assert_array_equal(back.features, stats.features)
    assert (back.n, back.extractor_id, back.resolution, back.source_sha256) == (40, "proj", (4, 4), "abc")


def test_edm_npz_has_moments_only(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3) * 2
    np.savez(tmp_path / "cifar10-32x32.npz", mu=mu, sigma=sigma)
    s = load_statistics(tmp_path / "cifar10-32x32.npz")
    assert s.n is None and s.extractor_id is None and s.features is None
    np.testing.assert_array_equal(s.sigma, sigma)


def test_torch_fidelity_caches(tmp_path):
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(4), np.eye(4)
    p = tmp_path / "input1-inception-v3-compat-stat-fid-2048.pt"
    torch.save({"mu": mu, "sigma": sigma}, p)
    s = load_statistics(p)
    np.testing.assert_array_equal(s.mu, mu)
    assert s.extractor_id == "inception-v3-compat"
    feats = torch.randn(30, 4)
    p2 = tmp_path / "input1-inception-v3-compat-features-2048.pt"
    torch.save(feats, p2)
    s2 = load_statistics(p2)
    assert s2.n == 30 and s2.features is not None
    np.testing.assert_allclose(s2.sigma, np.cov(feats.double().numpy(), rowvar=False), rtol=1e-10)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pt_with_code_is_refused_without_running_it(tmp_path, capsys):
    p = tmp_path / "evil-stat-fid-2048.pt"
    torch.save({"mu": _Payload()}, p)
    with pytest.raises(ConfigError, match="not a plain torch-fidelity statistics cache"):
        load_statistics(p)
    assert "must never run" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"mu": np.array([np.nan, 0.0]), "sigma": np.eye(2)}, "NaN or Inf"),
        ({"mu": np.zeros(2), "sigma": np.eye(3)}, "are not"),
        ({"m": np.zeros(2)}, "no 'mu' and 'sigma'"),
    ],
)
def test_bad_statistics_files(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError, match=match):
        load_statistics(tmp_path / "bad.npz")


def test_cache_featurises_a_source_once(home):
    ext = Proj()
    src = source_from_array(images(40))
    first, hit1 = cached_statistics(src, extractor=ext, batch=10)
    calls = ext.calls
    again, hit2 = cached_statistics(source_from_array(images(40)), extractor=ext, batch=10)
    assert (hit1, hit2) == (False, True) and ext.calls == calls
    np.testing.assert_array_equal(first.sigma, again.sigma)
    assert list((home / "stats").iterdir())
    # a features request is not served by a moments-only cache; the features file then serves both
    feats, hit3 = cached_statistics(src, extractor=ext, batch=10, keep_features=True)
    assert not hit3 and feats.features.shape == (40, 6)
    # another extractor id never reuses these statistics
    other = Proj(seed=1, id="proj-b")
    _, hit4 = cached_statistics(src, extractor=other, batch=10)
    assert not hit4


def test_extract_keeps_nothing_unless_asked():
    ext = Proj()
    batches = (torch.from_numpy(images(8, seed=i)).permute(0, 3, 1, 2) for i in range(5))
    ex = extract(batches, extractor=ext)
    assert ex.features is None and ex.logits is None and ex.moments.n == 40
    with pytest.raises(ConfigError, match="no images"):
        extract(iter([]), extractor=ext)
    with pytest.raises(ConfigError, match="gives no logits"):
        extract(iter([]), extractor=ext, keep_logits=True)
