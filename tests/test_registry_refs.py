"""Registry names for reference statistics and the Inception weights; format checks before pinning; forget."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from test_fetch import HTML, server  # noqa: F401 (a fixture: the local HTTP server; `home` is in conftest.py)
from test_registry import _entry, isolated  # noqa: F401

from diffbench.errors import ConfigError, ModelLoadError, UnknownNameError
from diffbench.models import fetch, registry
from diffbench.models.registry import CheckpointEntry

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def _stats_bytes(tmp_path, d: int = 16) -> bytes:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((d, d))
    np.savez(tmp_path / "ref.npz", mu=rng.standard_normal(d), sigma=a @ a.T)
    return (tmp_path / "ref.npz").read_bytes()


def test_inception_weights_entry_is_torch_fidelitys_file():
    """The URL torch-fidelity itself downloads, and the sha256 prefix its file name carries."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    e = registry.get_entry("inception-v3-compat")
    assert e.kind == "extractor-weights" and e.format == "state-dict"
    assert e.url == URL_INCEPTION_V3 and e.file_names() == (INCEPTION_FILE,)
    assert e.sha256_prefix == INCEPTION_FILE.rsplit("-", 1)[1].split(".")[0] == "6726825d"
    with pytest.raises(ModelLoadError, match="feature-extractor weights, not a model"):
        registry.load_checkpoint("inception-v3-compat", offline=True)


def test_sha256_prefix_is_validated_in_the_registry_file():
    base = (
        'schema = 1\n[checkpoint.w]\nkind = "extractor-weights"\nurl = "https://e.org/w.pth"\nformat = "state-dict"\n'
    )
    (e,) = registry.read_registry(base + 'sha256_prefix = "ABCD"\n')
    assert e.sha256_prefix == "abcd"
    with pytest.raises(ConfigError, match="sha256_prefix must be hex"):
        registry.read_registry(base + 'sha256_prefix = "xyz"\n')
    with pytest.raises(ConfigError, match="extractor-weights entries have format 'state-dict'"):
        registry.read_registry(base.replace('"state-dict"', '"edm-pickle"'))


def test_weights_entry_download_checks_prefix_and_format_then_pins(server, home, isolated, tmp_path):  # noqa: F811
    torch.save({"w": torch.arange(10.0)}, tmp_path / "w.pth")
    body = (tmp_path / "w.pth").read_bytes()
    digest = hashlib.sha256(body).hexdigest()
    server.files["/w.pth"] = body
    entry = CheckpointEntry(
        name="w", kind="extractor-weights", url=server.url + "/w.pth", format="state-dict", sha256_prefix=digest[:8]
    )
    isolated.register_checkpoint(entry)
    got = isolated.fetch_entry("w")
    assert got.sha256 == digest and fetch.read_lock()[server.url + "/w.pth"]["sha256"] == digest
    wrong = CheckpointEntry(
        name="w2", kind="extractor-weights", url=server.url + "/w.pth", format="state-dict", sha256_prefix="0" * 8
    )
    isolated.register_checkpoint(wrong)
    with pytest.raises(ModelLoadError, match="does not start with 00000000"):
        isolated.fetch_entry("w2")
    assert not (home / "checkpoints" / "w2" / "w.pth").exists()


def test_find_inception_weights_looks_in_the_cache_then_torch_hub(home, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert registry.find_inception_weights() is None
    cache, hub = registry.inception_weights_places()
    assert cache == home / "checkpoints" / "inception-v3-compat" / INCEPTION_FILE
    assert hub == tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILE
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"x")
    assert registry.find_inception_weights() == hub
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"y")
    assert registry.find_inception_weights() == cache


def test_inception_extractor_messages_name_the_places(home, tmp_path, monkeypatch):  # noqa: F811
    from diffbench.metrics.extractors import INCEPTION_ID, load_extractor

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ModelLoadError) as info:
        load_extractor(INCEPTION_ID)
    msg = str(info.value)
    cache, hub = registry.inception_weights_places()
    assert "diffbench checkpoints fetch inception-v3-compat" in msg and str(cache) in msg and str(hub) in msg
    assert "--inception-weights PATH" in msg and "\n" not in msg
    missing = tmp_path / "nope.pth"
    with pytest.raises(ModelLoadError, match=f"--inception-weights {missing}: {missing} does not exist"):
        load_extractor(INCEPTION_ID, weights_path=missing)
    # a file in the registry cache is found without any flag (here: not Inception weights, so refused by name)
    cache.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(2, 2)}, cache)
    with pytest.raises(ModelLoadError, match=f"{cache}: does not hold Inception-v3 weights"):
        load_extractor(INCEPTION_ID)


def test_resolve_reference_by_name_url_and_path(server, home, isolated, tmp_path):  # noqa: F811
    body = _stats_bytes(tmp_path)
    server.files["/refs/r.npz"] = body
    isolated.register_checkpoint(
        CheckpointEntry(name="fid-r", kind="fid-stats", url=server.url + "/refs/r.npz", format="fid-stats-npz")
    )
    path = registry.resolve_reference("fid-r")
    assert path == home / "checkpoints" / "fid-r" / "r.npz" and path.read_bytes() == body
    assert fetch.read_lock()[server.url + "/refs/r.npz"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert registry.resolve_reference(server.url + "/refs/r.npz").read_bytes() == body
    assert registry.resolve_reference(tmp_path / "ref.npz") == tmp_path / "ref.npz"
    with pytest.raises(ModelLoadError, match="no such file"):
        registry.resolve_reference(str(tmp_path / "missing.npz"))
    with pytest.raises(UnknownNameError, match="Did you mean 'fid-cifar10-32x32'"):
        registry.resolve_reference("fid-cifar10-32")
    with pytest.raises(ModelLoadError, match="is a model entry, not FID reference statistics"):
        registry.resolve_reference("edm-cifar10-32x32-cond-vp")
    # an error page in place of the statistics: quarantined, not cached, not pinned
    server.files["/refs/bad.npz"] = HTML
    isolated.register_checkpoint(
        CheckpointEntry(name="fid-bad", kind="fid-stats", url=server.url + "/refs/bad.npz", format="fid-stats-npz")
    )
    with pytest.raises(ModelLoadError, match="HTML or XML page.*nothing cached or pinned"):
        registry.resolve_reference("fid-bad")
    assert server.url + "/refs/bad.npz" not in fetch.read_lock()
    np.savez(tmp_path / "notstats.npz", images=np.zeros((2, 3)))
    server.files["/refs/notstats.npz"] = (tmp_path / "notstats.npz").read_bytes()
    with pytest.raises(ModelLoadError, match="not FID statistics: it holds images"):
        registry.resolve_reference(server.url + "/refs/notstats.npz")


def test_reference_for_model():
    assert registry.reference_for_model("edm-cifar10-32x32-cond-vp") == "fid-cifar10-32x32"
    assert registry.reference_for_model("baseline-imagenet-64x64-cond-adm") == "fid-imagenet-64x64-baseline"
    for spec in ("gmm", "fid-cifar10-32x32", "./net.pkl", "https://e.org/n.pkl"):
        assert registry.reference_for_model(spec) is None


def test_damaged_pinned_file_says_how_to_recover(server, home, isolated, tmp_path):  # noqa: F811
    """A file pinned by an older version although cut short: the load error names `checkpoints forget`."""
    from test_formats import NET_KWARGS

    from diffbench.models.edm_pickle import write_edm_pickle
    from diffbench.models.nets import build_network
    from diffbench.models.precond import EDMPrecond

    net = EDMPrecond(build_network("SongUNet", NET_KWARGS), img_resolution=8, img_channels=3, label_dim=0)
    write_edm_pickle(tmp_path / "n.pkl", denoiser=net)
    url = server.url + "/n.pkl"
    isolated.register_checkpoint(_entry(url, name="tiny-edm", format="edm-pickle"))
    cached = home / "checkpoints" / "tiny-edm" / "n.pkl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes((tmp_path / "n.pkl").read_bytes()[:-4000])
    fetch.record_hash(url, sha256=fetch.sha256_file(cached), size=cached.stat().st_size)
    with pytest.raises(ModelLoadError, match="ends early.*diffbench checkpoints forget tiny-edm") as info:
        registry.load_checkpoint("tiny-edm", offline=True)
    assert "\n" not in str(info.value)
    done = registry.forget("tiny-edm")
    assert [moved is not None for _, moved in done] == [True] and fetch.read_lock() == {}
    server.files["/n.pkl"] = (tmp_path / "n.pkl").read_bytes()
    assert type(registry.load_checkpoint("tiny-edm")).__name__ == "EDMPrecond"
