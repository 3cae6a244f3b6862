"""The built-in digits models, classifier and feature space: shipped files, their hashes, loading, metrics."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import diffbench
from diffbench.errors import ConfigError
from diffbench.metrics.extractors import load_extractor
from diffbench.models import registry
from diffbench.models.builtin import builtin_dir, digits_data

MODELS = {"digits-edm": 0, "digits-edm-early": 0, "digits-edm-cond": 10}
BUILTIN_ENTRIES = (
    *MODELS,
    "digits-classifier",
    "digits-data",
    "digits-stats",
    "digits-stats-heldout",
    "digits-stats-all",
)
PKG = Path(diffbench.__file__).resolve().parent
pytestmark = pytest.mark.usefixtures("one_thread")


def _cli() -> str:
    exe = shutil.which("diffbench") or str(Path(sys.executable).parent / "diffbench")
    assert Path(exe).exists(), "the diffbench console script is not installed"
    return exe


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def heldout():
    images, labels = digits_data().split("heldout")
    return torch.from_numpy(images), torch.from_numpy(labels)


def test_every_shipped_file_is_pinned_by_its_registry_entry():
    """Each builtin entry names a file in the package whose sha256 and size checkpoints.toml records."""
    for name in BUILTIN_ENTRIES:
        e = registry.get_entry(name)
        path = builtin_dir() / e.url.removeprefix("builtin:")
        assert e.url.startswith("builtin:") and path.is_file(), name
        assert e.sha256 == {path.name: _sha(path)} and e.size == {path.name: path.stat().st_size}, name
        assert [s.status for s in registry.verify_entry(e)] == ["ok"], name
    total = sum((builtin_dir() / registry.get_entry(n).url.removeprefix("builtin:")).stat().st_size for n in MODELS)
    assert total < 6e6  # the models ship inside the package: a few MB at most


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_builtin_model_loads_through_the_public_loader(name):
    m = diffbench.load(name)
    path = builtin_dir() / f"{name}.pt"
    assert (m.img_resolution, m.img_channels, m.label_dim) == (8, 1, MODELS[name])
    assert m.source_info["sha256"] == _sha(path) and m.source_info["checked_against"] == "published"
    # the registry entry and the JSON sidecar beside the file describe the same network
    side = json.loads(path.with_suffix(".json").read_text())
    e = registry.get_entry(name)
    assert side["network_kwargs"] == dict(e.network_kwargs) and side["precond_kwargs"] == dict(e.precond_kwargs)
    by_path = diffbench.load(str(path))
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.05, 0.5, 2.0, 20.0])
    labels = torch.eye(10)[[1, 3, 5, 7]] if MODELS[name] else None
    with torch.no_grad():
        out = m(x, sigma, labels)
        assert out.shape == (4, 1, 8, 8) and torch.isfinite(out).all()
        assert torch.equal(out, by_path(x, sigma, labels))


def _heldout_denoising_error(model, images: torch.Tensor) -> float:
    """Mean squared error of D(x + sigma n) against x on held-out digits at fixed sigmas and noise."""
    x = images.float() / 127.5 - 1  # uint8 0..255 back to [-1, 1] (within one quantization step)
    g = torch.Generator().manual_seed(1)
    errs = []
    with torch.no_grad():
        for s in (0.1, 0.3, 1.0, 3.0):
            noisy = x + s * torch.randn(x.shape, generator=g)
            errs.append(float((model(noisy, torch.full((len(x),), s)) - x).square().mean()))
    return float(np.mean(errs))


def test_trained_model_denoises_held_out_digits_better_than_the_early_snapshot(heldout):
    """Well trained beats under-trained on images neither saw, and both beat the best data-free guess
    (Wiener-style shrinkage toward the training mean would already get below sigma^2; we ask for far less)."""
    images, _ = heldout
    full = _heldout_denoising_error(diffbench.load("digits-edm"), images)
    early = _heldout_denoising_error(diffbench.load("digits-edm-early"), images)
    x = images.float() / 127.5 - 1
    var = float(x.var())  # MSE of predicting the data mean: the error of a denoiser that ignores its input
    assert full < early < var


def test_digits_extractor_features_shape_determinism_and_id(heldout):
    images, _ = heldout
    ex = load_extractor("digits")
    assert ex.id == "digits-cnn@" + _sha(builtin_dir() / "digits-classifier.pt")[:12]
    f = ex.features(images[:50])
    assert f.shape == (50, 64) and f.dtype == torch.float32
    assert torch.equal(f, ex.features(images[:50]))  # deterministic
    torch.testing.assert_close(ex.features(images[10:20]), f[10:20], rtol=1e-5, atol=1e-5)  # batch invariant
    rgb = images[:50].expand(-1, 3, -1, -1).contiguous()  # grey images given as RGB give the same features
    torch.testing.assert_close(ex.features(rgb), f)
    with pytest.raises(ConfigError, match="8x8"):
        ex.features(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="uint8"):
        ex.features(torch.zeros(2, 1, 8, 8))


def test_shipped_statistics_are_those_of_the_shipped_data(heldout):
    """mu/sigma of the held-out split, recomputed here with numpy from the shipped extractor and data."""
    from diffbench.metrics.stats import load_statistics

    images, _ = heldout
    feats = load_extractor("digits").features(images).double().numpy()
    st = load_statistics(registry.fetch_file("digits-stats-heldout")[0])
    assert st.n == len(images) == 297 and st.extractor_id == load_extractor("digits").id
    np.testing.assert_allclose(st.mu, feats.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st.sigma, np.cov(feats, rowvar=False), rtol=1e-4, atol=1e-6)
    d = digits_data()
    assert len(d.images) == 1797 and len(np.intersect1d(d.train, d.heldout)) == 0
    assert len(d.train) + len(d.heldout) == 1797


def test_classifier_accuracy_on_the_held_out_split(heldout):
    from diffbench.metrics.classifier import sample_accuracy

    images, labels = heldout
    acc = sample_accuracy(images, labels)
    assert acc.accuracy >= 0.97 and acc.n == 297
    assert set(acc.per_class) == set(range(10)) and sum(acc.per_class_n.values()) == 297
    # independent count of the hits from the predictions
    assert acc.accuracy == pytest.approx(float((torch.as_tensor(acc.predicted) == labels).float().mean()))
    wrong = sample_accuracy(images, (labels + 1) % 10)  # shifted labels: the classifier must disagree
    assert wrong.accuracy < 0.05


def test_conditional_samples_have_shape_labels_and_their_class():
    from diffbench.metrics.classifier import sample_accuracy

    m = diffbench.load("digits-edm-cond")
    labels = torch.arange(40) % 10
    s = diffbench.sample(m, seeds=range(40), class_labels=labels, solver="heun", nfe=15, device="cpu")
    assert s.images.shape == (40, 1, 8, 8) and torch.equal(s.class_labels, labels) and s.nfe == 15
    assert sample_accuracy(s.images, labels).accuracy >= 0.8
    u = diffbench.sample(diffbench.load("digits-edm"), seeds=range(3), solver="euler", nfe=4, device="cpu")
    assert u.images.shape == (3, 1, 8, 8) and u.class_labels is None


def _run(args: list[str], *, env: dict | None = None, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_cli(), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        cwd=cwd,
        timeout=300,
    )


def test_cli_samples_a_builtin_model_and_refuses_a_bad_class(tmp_path):
    r = _run(["sample", "digits-edm-cond", "--nfe", "5", "--seeds", "0-3", "--class", "7", "--out", "x"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "x").glob("*.png"))) == 4
    r = _run(["sample", "digits-edm-cond", "--nfe", "5", "--seeds", "0-3", "--class", "10", "--out", "y"], cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "[0, 9]" in lines[0] and "Traceback" not in r.stderr


def test_cli_refuses_a_corrupted_shipped_file_in_one_line(tmp_path):
    """A copy of the package with one flipped byte in digits-edm.pt, imported first through PYTHONPATH."""
    copy = tmp_path / "pkg" / "diffbench"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__", "*.log"))
    weights = copy / "models" / "builtin" / "digits-edm.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    r = _run(
        ["sample", "digits-edm", "--nfe", "3", "--seeds", "0-1", "--out", "x"],
        env={"PYTHONPATH": str(copy.parent)},
        cwd=tmp_path,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "corrupted" in lines[0] and str(weights) in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
