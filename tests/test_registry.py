"""checkpoints.toml contents, registry validation, and load_checkpoint's dispatch through fetch and verify."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from test_fetch import server  # noqa: F401 (a fixture: the local HTTP server; `home` is in conftest.py)
from test_formats import NET_KWARGS

from diffbench.errors import ConfigError, DiffbenchError, ModelLoadError, UnknownNameError
from diffbench.models import fetch, registry
from diffbench.models.registry import CheckpointEntry, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EDM = "https://nvlabs-fi-cdn.nvidia.com/edm/"
RELEASES = [
    f"{p}-{d}"
    for p in ("edm", "baseline")
    for d in (
        "cifar10-32x32-cond-vp",
        "cifar10-32x32-cond-ve",
        "cifar10-32x32-uncond-vp",
        "cifar10-32x32-uncond-ve",
        "ffhq-64x64-uncond-vp",
        "ffhq-64x64-uncond-ve",
        "afhqv2-64x64-uncond-vp",
        "afhqv2-64x64-uncond-ve",
        "imagenet-64x64-cond-adm",
    )
]
FID_REFS = ("cifar10-32x32", "ffhq-64x64", "afhqv2-64x64", "imagenet-64x64", "imagenet-64x64-baseline")


@pytest.fixture()
def isolated(monkeypatch):
    """A private copy of the registry, so tests can register entries."""
    monkeypatch.setattr(registry, "_ENTRIES", registry.entries())
    return registry


def test_top_level_file_is_the_packaged_one():
    top = ROOT / "checkpoints.toml"
    assert top.is_symlink() and top.resolve() == (ROOT / "diffbench" / "checkpoints.toml").resolve()


def test_every_reference_checkpoint_is_listed_with_its_url():
    e = registry.entries()
    for name in RELEASES:
        sub = "pretrained/baseline/" if name.startswith("baseline") else "pretrained/"
        assert e[name].url == f"{EDM}{sub}{name}.pkl" and e[name].format == "edm-pickle"
    for ref in FID_REFS:
        assert e[f"fid-{ref}"].url == f"{EDM}fid-refs/{ref}.npz" and e[f"fid-{ref}"].kind == "fid-stats"
    assert e["ddpm-cifar10-32"].format == "diffusers" and "config.json" in e["ddpm-cifar10-32"].files


def test_release_metadata_follows_the_names():
    """Preconditioning (REFERENCE §2), image size and label count read off each release name."""
    for name in RELEASES:
        e = registry.get_entry(name)
        m = re.match(r"(edm|baseline)-(\w+)-(\d+)x\d+-(cond|uncond)-(vp|ve|adm)$", name)
        family, data, res, cond, arch = m.groups()
        want = "EDMPrecond" if family == "edm" else {"vp": "VPPrecond", "ve": "VEPrecond", "adm": "IDDPMPrecond"}[arch]
        assert e.precond == want, name
        assert e.network == ("DhariwalUNet" if arch == "adm" else "SongUNet")
        assert e.resolution == int(res) and e.channels == 3
        assert e.label_dim == ({"cifar10": 10, "imagenet": 1000}[data] if cond == "cond" else 0)
        ref = registry.get_entry(e.fid_ref)
        assert ref.kind == "fid-stats" and ref.resolution == e.resolution
        assert ref.name.startswith(f"fid-{data}")
    assert registry.get_entry("baseline-imagenet-64x64-cond-adm").fid_ref == "fid-imagenet-64x64-baseline"
    assert registry.get_entry("edm-imagenet-64x64-cond-adm").fid_ref == "fid-imagenet-64x64"


def test_sampler_settings_are_consistent():
    """Heun under the EDM endpoint costs 2N - 1 evaluations (EDM Algorithm 1); churn settings as published."""
    for e in registry.entries().values():
        if e.kind != "model" or e.url.startswith(registry.BUILTIN_SCHEME):  # built-ins: no paper score
            continue
        s = e.sampler
        assert s and "expected_fid" in s and "source" in s, e.name
        if s["solver"] == "heun":
            assert s["nfe"] == 2 * s["steps"] - 1, e.name
    assert registry.get_entry("edm-cifar10-32x32-cond-vp").sampler["expected_fid"] == 1.79
    im = registry.get_entry("edm-imagenet-64x64-cond-adm").sampler
    assert (im["steps"], im["churn"], im["s_min"], im["s_max"], im["s_noise"]) == (
        256,
        40.0,
        0.05,
        50.0,
        1.003,
    )


def test_no_hash_is_claimed_without_a_source():
    """REFERENCE §2: no sha256 or exact size is published for these files, so the registry claims none."""
    for e in registry.entries().values():
        if e.url.startswith(registry.BUILTIN_SCHEME):  # diffbench's own shipped files: pinned (test_digits_builtin)
            continue
        assert e.sha256 == {} and e.size == {}, e.name


def test_unknown_name_suggests_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'edm-cifar10-32x32-cond-vp'"):
        registry.get_entry("edm-cifar10-32x32-cond-pv")
    with pytest.raises(UnknownNameError, match="Did you mean 'ddpm-cifar10-32'"):
        load_checkpoint("ddpm-cifar10")


def _toml(body: str) -> str:
    return "schema = 1\n" + body


GOOD = """
[checkpoint.m]
kind = "model"
url = "https://example.org/m.pt"
format = "state-dict"
network = "SongUNet"
precond = "EDMPrecond"
resolution = 8
channels = 3
label_dim = 0
"""


@pytest.mark.parametrize(
    "patch,match",
    [
        ('colour = "red"\n', "unknown keys colour"),
        ('fid_ref = "nope"\n', "fid_ref 'nope'"),
        ('sha256 = "abc"\n', "64 hex digits"),
        ('size = "big"\n', "'size' must be"),
        ('sampler = { solver = "heun", stepz = 3 }\n', "unknown sampler keys stepz"),
        ('files = ["../x"]\n', "relative names"),
    ],
)
def test_registry_validation(patch, match):
    with pytest.raises(DiffbenchError, match=match):
        registry.read_registry(_toml(GOOD + patch))


def test_registry_validation_of_types_and_formats():
    with pytest.raises(UnknownNameError, match="checkpoint format"):
        registry.read_registry(_toml(GOOD.replace('"state-dict"', '"onnx"')))
    with pytest.raises(ConfigError, match="'resolution' has the wrong type"):
        registry.read_registry(_toml(GOOD.replace("resolution = 8", 'resolution = "8"')))
    with pytest.raises(ConfigError, match="need 'label_dim'"):
        registry.read_registry(_toml(GOOD.replace("label_dim = 0", "")))
    with pytest.raises(ConfigError, match="url must be http"):
        registry.read_registry(_toml(GOOD.replace("https://example.org/m.pt", "/local/m.pt")))
    with pytest.raises(ConfigError, match="checkpoints.toml"):
        registry.read_registry("[[[")
    (e,) = registry.read_registry(_toml(GOOD + f'sha256 = "{"A" * 64}"\nsize = 10\n'))
    assert e.sha256 == {"m.pt": "a" * 64} and e.size == {"m.pt": 10}


def test_register_refuses_duplicates(isolated):
    entry = registry.read_registry(_toml(GOOD))[0]
    isolated.register_checkpoint(entry)
    with pytest.raises(ConfigError, match="already registered"):
        isolated.register_checkpoint(entry)
    with pytest.raises(ConfigError, match="already registered"):
        isolated.register_checkpoint(registry.get_entry("edm-cifar10-32x32-cond-vp"))


def test_fid_stats_entry_is_not_a_model():
    with pytest.raises(ModelLoadError, match="FID reference statistics, not a model"):
        load_checkpoint("fid-cifar10-32x32", offline=True)


def test_registry_name_offline_and_not_cached(home):  # noqa: F811
    with pytest.raises(ModelLoadError, match="offline") as info:
        load_checkpoint("edm-cifar10-32x32-cond-vp", offline=True)
    assert "\n" not in str(info.value)
    assert not home.exists() or [p for p in home.rglob("*") if p.is_file()] == []


# ---------------------------------------------------------------- end to end through a local server


def _tiny_state_dict_bytes(tmp_path) -> bytes:
    from diffbench.models.nets import build_network

    torch.manual_seed(0)
    net = build_network("SongUNet", NET_KWARGS)
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    return path.read_bytes()


def _entry(url: str, **kw) -> CheckpointEntry:
    base = dict(
        name="tiny-test",
        kind="model",
        url=url,
        format="state-dict",
        network="SongUNet",
        network_kwargs=NET_KWARGS,
        precond="EDMPrecond",
        resolution=8,
        channels=3,
        label_dim=0,
    )
    return CheckpointEntry(**{**base, **kw})


def test_registry_entry_downloads_verifies_and_loads(server, home, isolated, tmp_path, monkeypatch):  # noqa: F811
    body = _tiny_state_dict_bytes(tmp_path)
    server.files["/tiny.pt"] = body
    isolated.register_checkpoint(_entry(server.url + "/tiny.pt"))
    seen = []
    model = load_checkpoint("tiny-test", progress=lambda d, t: seen.append((d, t)))
    digest = hashlib.sha256(body).hexdigest()
    assert model.source_info == {
        "spec": "tiny-test",
        "name": "tiny-test",
        "url": server.url + "/tiny.pt",
        "path": str(home / "checkpoints" / "tiny-test" / "tiny.pt"),
        "sha256": digest,
        "format": "state-dict",
        "checked_against": "recorded now",
    }
    assert seen[-1] == (len(body), len(body))
    assert fetch.read_lock()[server.url + "/tiny.pt"]["sha256"] == digest  # first download recorded it
    assert not model.training
    # offline: the cached copy is verified and used, the network is not touched
    n = len(server.log)
    again = load_checkpoint("tiny-test", offline=True)
    assert len(server.log) == n and again.source_info["sha256"] == digest
    assert again.source_info["checked_against"] == "lock file"
    # a tampered cached file is quarantined, never loaded
    cached = home / "checkpoints" / "tiny-test" / "tiny.pt"
    cached.write_bytes(body[:-8] + b"\x00" * 8)
    with pytest.raises(ModelLoadError, match="does not match"):
        load_checkpoint("tiny-test", offline=True)
    assert not cached.exists() and len(list((home / "quarantine").iterdir())) == 1
    statuses = isolated.verify_entry("tiny-test")
    assert [s.status for s in statuses] == ["missing"]


def test_registry_entry_with_published_hash_rejects_other_bytes(server, home, isolated, tmp_path):  # noqa: F811
    body = _tiny_state_dict_bytes(tmp_path)
    server.files["/tiny.pt"] = body
    isolated.register_checkpoint(_entry(server.url + "/tiny.pt", sha256={"tiny.pt": "1" * 64}))
    with pytest.raises(ModelLoadError, match="never loaded"):
        load_checkpoint("tiny-test")
    assert not (home / "checkpoints" / "tiny-test" / "tiny.pt").exists()
    assert fetch.read_lock() == {}


def test_registry_entry_whose_file_disagrees_with_the_entry(server, home, isolated, tmp_path):  # noqa: F811
    server.files["/tiny.pt"] = _tiny_state_dict_bytes(tmp_path)
    isolated.register_checkpoint(_entry(server.url + "/tiny.pt", label_dim=10, precond_kwargs={"label_dim": 0}))
    with pytest.raises(ModelLoadError, match="label_dim 0, the registry says 10"):
        load_checkpoint("tiny-test")


def test_multi_file_entry_and_verify(server, home, isolated):  # noqa: F811
    server.files["/repo/a.json"] = b'{"a": 1}'
    server.files["/repo/b.dat"] = b"\x00" * 100  # a suffix without a format check
    entry = CheckpointEntry(
        name="multi",
        kind="fid-stats",
        url=server.url + "/repo/",
        format="fid-stats-npz",
        files=("a.json", "b.dat"),
    )
    isolated.register_checkpoint(entry)
    got = isolated.fetch_entry("multi")
    assert got.path == home / "checkpoints" / "multi" and sorted(got.recorded) == ["a.json", "b.dat"]
    want = registry.combined_sha256(
        [
            ("a.json", hashlib.sha256(b'{"a": 1}').hexdigest()),
            ("b.dat", hashlib.sha256(b"\x00" * 100).hexdigest()),
        ]
    )
    assert got.sha256 == want
    assert [s.status for s in isolated.verify_entry("multi")] == ["ok", "ok"]
    (got.path / "b.dat").write_bytes(b"\x01" * 100)
    assert [s.status for s in isolated.verify_entry("multi")] == ["ok", "mismatch"]
    assert not (got.path / "b.dat").exists()


def test_url_spec_downloads_into_url_cache(server, home, tmp_path):  # noqa: F811
    server.files["/w/stats.npz"] = _npz_bytes(tmp_path)
    with pytest.raises(ModelLoadError, match="NumPy .npz.*moved to .*quarantine.*nothing cached or pinned"):
        load_checkpoint(server.url + "/w/stats.npz")
    # not a model: refused by the format check before it was cached or pinned
    cached = fetch.url_dest(server.url + "/w/stats.npz")
    assert cached.parent.parent == home / "urls" and not cached.exists() and fetch.read_lock() == {}
    # a model file by URL is cached under urls/ and pinned
    server.files["/w/net.pt"] = _tiny_state_dict_bytes(tmp_path)
    with pytest.raises(ModelLoadError, match="bare state dict"):
        load_checkpoint(server.url + "/w/net.pt")
    assert fetch.url_dest(server.url + "/w/net.pt").exists() and server.url + "/w/net.pt" in fetch.read_lock()
    with pytest.raises(ModelLoadError, match="HTTP 404"):
        load_checkpoint(server.url + "/w/none.pkl")


def _npz_bytes(tmp_path) -> bytes:
    import numpy as np

    np.savez(tmp_path / "s.npz", mu=np.zeros(3), sigma=np.eye(3))
    return (tmp_path / "s.npz").read_bytes()


@pytest.mark.skipif(
    importlib.util.find_spec("diffbench.models.edm_pickle") is None,
    reason="diffbench.models.edm_pickle is not in this build yet",
)
def test_edm_pickle_entry_end_to_end(server, home, isolated, tmp_path):  # noqa: F811
    """A registry name whose file is an EDM pickle: download, verify, load, same outputs as the original."""
    from diffbench.models.edm_pickle import write_edm_pickle
    from diffbench.models.nets import build_network
    from diffbench.models.precond import VPPrecond

    torch.manual_seed(0)
    net = build_network("SongUNet", {**NET_KWARGS, "label_dim": 10})
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    original = VPPrecond(net, img_resolution=8, img_channels=3, label_dim=10).eval()
    write_edm_pickle(tmp_path / "net.pkl", denoiser=original)
    server.files["/edm/net.pkl"] = (tmp_path / "net.pkl").read_bytes()
    isolated.register_checkpoint(
        _entry(
            server.url + "/edm/net.pkl",
            name="tiny-edm",
            format="edm-pickle",
            precond="VPPrecond",
            label_dim=10,
        )
    )
    model = load_checkpoint("tiny-edm")
    assert type(model).__name__ == "VPPrecond" and model.source_info["format"] == "edm-pickle"
    assert model.source_info["sha256"] == hashlib.sha256(server.files["/edm/net.pkl"]).hexdigest()
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.1, 5.0])
    labels = torch.nn.functional.one_hot(torch.tensor([3, 7]), 10).float()
    with torch.no_grad():
        torch.testing.assert_close(model(x, sigma, labels), original(x, sigma, labels), rtol=0, atol=0)
    # the same file through a URL spec and a local path gives the same model and hash
    by_url = load_checkpoint(server.url + "/edm/net.pkl")
    by_path = load_checkpoint(str(tmp_path / "net.pkl"))
    assert by_url.source_info["sha256"] == by_path.source_info["sha256"] == model.source_info["sha256"]
    # the registry's label count must agree with the file's
    isolated.register_checkpoint(_entry(server.url + "/edm/net.pkl", name="tiny-edm-wrong", format="edm-pickle"))
    with pytest.raises(ModelLoadError, match="label_dim 10, the registry says 0"):
        load_checkpoint("tiny-edm-wrong")


def test_local_directory_hash_covers_every_file(tmp_path):
    (tmp_path / "a").write_text("1")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_text("2")
    h1 = registry.local_sha256(tmp_path)
    (tmp_path / "sub" / "b").write_text("3")
    assert registry.local_sha256(tmp_path) != h1
    assert json.dumps(h1) and len(h1) == 64


def test_fetch_file_resolves_names_urls_and_paths(server, home, tmp_path):  # noqa: F811
    data = _npz_bytes(tmp_path)
    server.files["/refs/c.npz"] = data
    path, digest = registry.fetch_file(server.url + "/refs/c.npz")
    assert path.read_bytes() == data and digest == hashlib.sha256(data).hexdigest()
    assert registry.fetch_file(str(tmp_path / "s.npz")) == (tmp_path / "s.npz", digest)
    with pytest.raises(ModelLoadError, match="offline"):
        registry.fetch_file("fid-cifar10-32x32", offline=True)
    with pytest.raises(UnknownNameError, match="Did you mean 'fid-cifar10-32x32'"):
        registry.fetch_file("fid-cifar10-32")
    with pytest.raises(ModelLoadError, match="no such file"):
        registry.fetch_file(str(tmp_path / "missing.npz"))
