"""The loader against a file diffbench did not write: a pickle made by NVlabs/edm's own pickler.

tests/fixtures/edm_golden/README.md says how it was made (random weights, EDM's module source removed).
The expected outputs were computed by EDM's own code when the file was written.
"""

from __future__ import annotations

import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch

import diffbench
from diffbench.models import edm_pickle as E

HERE = Path(__file__).parent / "fixtures" / "edm_golden"
PKL = HERE / "edm_songunet_8x8_random.pkl"
REF = np.load(HERE / "edm_songunet_8x8_random.npz")


@pytest.fixture(scope="module")
def model():
    return diffbench.load(str(PKL))


def test_output_equals_edm_forward_pass(model):
    x, sigma, labels = (torch.from_numpy(REF[k]) for k in ("x", "sigma", "class_labels"))
    with torch.no_grad():
        got = model(x, sigma, labels).float()
    want = torch.from_numpy(REF["D"])
    # float32 on the CPU, a different but equivalent implementation: agreement to a few float32 ulps
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), float((got - want).abs().max())
    assert float((got - want).abs().max()) < 1e-3 * float(want.abs().max())


def test_labels_and_sigmas_matter_at_these_inputs(model):
    """The recorded case is sensitive to the class and the noise level (so wiring either wrong is caught)."""
    x, sigma, labels = (torch.from_numpy(REF[k]) for k in ("x", "sigma", "class_labels"))
    with torch.no_grad():
        base = model(x, sigma, labels)
        assert (model(x, sigma, labels.flip(1)) - base).abs().max() > 1e-3
        assert (model(x, sigma.flip(0), labels) - base).abs().max() > 1e-3


def test_round_sigma_range_and_shape(model):
    assert torch.equal(model.round_sigma(torch.from_numpy(REF["round_probe"])), torch.from_numpy(REF["round_sigma"]))
    assert [model.sigma_min, model.sigma_max] == REF["sigma_range"].tolist()
    assert (model.img_channels, model.img_resolution, model.label_dim) == (3, 8, 2)


def test_the_file_is_edms_layout_and_carries_no_source():
    raw = PKL.read_bytes()
    strings = [arg for op, arg, _ in pickletools.genops(raw) if "UNICODE" in op.name]
    sources = [s for s in strings if s.startswith("# NVlabs/edm module source removed")]
    assert len(sources) == 1 and not any("def forward" in s or "import torch" in s for s in strings)
    data = E.read_edm_pickle(PKL)
    assert set(data) == {"ema", "loss_fn", "augment_pipe", "dataset_kwargs"}
    assert data["ema"].class_name == "EDMPrecond" and data["ema"].source_chars == len(sources[0])
    assert data["ema"].state["_modules"]["model"].class_name == "SongUNet"


def test_samples_from_the_golden_pickle(model):
    out = diffbench.sample(model, seeds=[0, 1], solver="heun", nfe=5, device="cpu", class_labels=1)
    assert out.images.shape == (2, 3, 8, 8) and torch.isfinite(out.images).all() and out.nfe == 5
