"""The real torch-fidelity Inception class, loaded by diffbench from a random weights file written here."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch

from diffbench.errors import ModelLoadError, UnknownNameError
from diffbench.metrics.extractors import (
    EXTRACTORS,
    INCEPTION_ID,
    INCEPTION_WEIGHTS_FILE,
    ExtractorInfo,
    has_logits,
    load_extractor,
    register_extractor,
)
from diffbench.metrics.sources import source_from_array
from diffbench.metrics.stats import statistics_of

fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")


def write_random_inception_weights(path, seed=0):
    """A state dict with exactly the keys and shapes the class expects; BN statistics calibrated on noise."""
    torch.manual_seed(seed)
    cls = fe.FeatureExtractorInceptionV3
    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(cls, "load_state_dict", lambda self, sd, *a, **k: None),
    ):
        net = cls(INCEPTION_ID, ["2048"])
    # default init shrinks activations ~1e-8 over 90 layers; set BN running stats from one batch instead
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    net.train()
    with torch.no_grad():
        net((torch.rand(4, 3, 16, 16) * 255).to(torch.uint8))
    torch.save(net.state_dict(), path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    write_random_inception_weights(path)
    return path


@pytest.fixture(scope="module")
def inception(weights):
    return load_extractor(INCEPTION_ID, weights_path=weights)


def images(n, seed=0, size=16, channels=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def test_features_and_logits_shapes_and_id(inception, weights):
    x = images(3)
    f, logits = inception.features_and_logits(x)
    assert f.shape == (3, 2048) and logits.shape == (3, 1008)
    assert torch.isfinite(f).all() and f.std(0).mean() > 1e-3  # calibrated: not the degenerate default
    # non-standard weights are named by their hash, so their statistics never mix with the real ones
    assert inception.id.startswith(INCEPTION_ID + "@") and has_logits(inception)


def test_batch_size_independence(inception):
    x = images(6, seed=1)
    whole = inception.features(x).double()
    for batch in (1, 4):
        parts = torch.cat([inception.features(x[i : i + batch]) for i in range(0, 6, batch)]).double()
        torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-5 * whole.abs().max().item())


def test_grey_images_are_fed_as_rgb(inception):
    x = images(2, seed=2, channels=1)
    torch.testing.assert_close(inception.features(x), inception.features(x.expand(-1, 3, -1, -1)))


def test_statistics_of_a_source_match_numpy(inception):
    x = images(5, seed=3)
    stats = statistics_of(source_from_array(x), extractor=inception, batch=2)
    f = inception.features(x).double().numpy()
    np.testing.assert_allclose(stats.mu, f.mean(0), rtol=1e-4, atol=1e-6 * np.abs(f).max())
    assert stats.n == 5 and stats.extractor_id == inception.id and stats.resolution == (16, 16)


def test_missing_weights_name_the_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError) as err:
        load_extractor(INCEPTION_ID)
    msg = str(err.value)
    assert INCEPTION_WEIGHTS_FILE in msg and str(tmp_path / "hub" / "checkpoints") in msg
    assert "--inception-weights" in msg and "\n" not in msg


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_file_with_code_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    torch.save({"x": _Payload()}, bad)
    with pytest.raises(ModelLoadError, match="not a plain state dict"):
        load_extractor(INCEPTION_ID, weights_path=bad)
    assert "must never run" not in capsys.readouterr().out


def test_wrong_state_dict_is_one_line(tmp_path):
    bad = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(ModelLoadError, match="does not hold Inception-v3 weights") as err:
        load_extractor(INCEPTION_ID, weights_path=bad)
    assert "\n" not in str(err.value)


def test_registry_refuses_duplicates_and_unknown_names():
    with pytest.raises(Exception, match="already registered"):
        register_extractor(ExtractorInfo(name=INCEPTION_ID, factory=lambda **k: None, description=""))
    with pytest.raises(UnknownNameError, match="inception-v3-compat"):
        load_extractor("inceptoin-v3-compat")
    assert INCEPTION_ID in EXTRACTORS


def test_cli_stats_and_fid_with_local_weights(tmp_path, monkeypatch, cli, weights):
    monkeypatch.setenv("DIFFBENCH_HOME", str(tmp_path / "home"))
    imgs = np.random.default_rng(0).integers(0, 256, (4, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", images=imgs)
    w = ("--inception-weights", str(weights), "--device", "cpu")
    code, out, err = cli("stats", tmp_path / "s.npz", "-o", tmp_path / "ref.npz", *w, "--batch", "3")
    assert code == 0, err
    assert "4 images 12x12, extractor inception-v3-compat@" in out and "2048-d" in out
    code, out, err = cli("fid", tmp_path / "s.npz", "--ref", tmp_path / "ref.npz", *w, "--json", "--allow-small-n")
    assert code == 0, err
    import json

    from diffbench.metrics.stats import load_statistics

    scale = float(np.trace(load_statistics(tmp_path / "ref.npz").sigma))
    r = json.loads(out)
    assert r["n"] == 4 and 0 <= r["fid"] < 1e-6 * scale  # same images: zero up to the rank-3 eigen-noise
    # full-covariance FID needs n > 2048 unless told otherwise
    code, _, err = cli("fid", tmp_path / "s.npz", "--ref", tmp_path / "ref.npz", *w)
    assert code != 0 and "needs at least 2049" in err


def test_tf32_is_off_during_extraction_and_restored(inception, monkeypatch):
    seen = []
    real = inception.net.forward

    def spy(x):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return real(x)

    monkeypatch.setattr(inception.net, "forward", spy)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    inception.features(images(1))
    assert seen == [(False, False)] and torch.backends.cudnn.allow_tf32 is True
