"""diffbench's SongUNet/DhariwalUNet against outputs of NVlabs/edm's own networks (tests/fixtures/edm).

Each fixture holds random weights in EDM's key layout, inputs, and what EDM's training/networks.py
computed from them; tolerance: float32 rounding, |a - b| <= 1e-5 |b| + 1e-5 max|b|.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffbench.errors import ConfigError, UnknownNameError
from diffbench.models import precond as P
from diffbench.models.nets import build_network, network_arguments

FIXTURES = Path(__file__).parent / "fixtures" / "edm"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.npz"))
PRECOND_CLASSES = {
    "VPPrecond": P.VPPrecond,
    "VEPrecond": P.VEPrecond,
    "iDDPMPrecond": P.IDDPMPrecond,
    "EDMPrecond": P.EDMPrecond,
}
PRECOND_CONSTANTS = {
    "VPPrecond": ("beta_d", "beta_min", "M", "epsilon_t"),
    "VEPrecond": ("sigma_min", "sigma_max"),
    "iDDPMPrecond": ("C_1", "C_2", "M"),
    "EDMPrecond": ("sigma_min", "sigma_max", "sigma_data"),
}


TINY = dict(
    img_resolution=8,
    in_channels=3,
    out_channels=3,
    model_channels=8,
    channel_mult=[1],
    num_blocks=1,
    attn_resolutions=[],
)


def load_fixture(name: str) -> dict:
    """One fixture: meta, the exact float32 state dict (q * 2^-e) and every array as a tensor."""
    z = np.load(FIXTURES / f"{name}.npz")
    out = {k: torch.from_numpy(z[k]) for k in z.files if "/" not in k and k != "meta"}
    out["meta"] = json.loads(bytes(z["meta"]).decode())
    out["state"] = {
        k[2:]: torch.from_numpy(z[k].astype(np.float32) * np.float32(2.0 ** -int(z["e/" + k[2:]])))
        for k in z.files
        if k.startswith("q/")
    }
    out["precond_buffers"] = {
        k.split("/", 1)[1]: torch.from_numpy(z[k]) for k in z.files if k.startswith("precond_buffer/")
    }
    return out


def assert_close_to_reference(actual: torch.Tensor, ref: torch.Tensor) -> None:
    """float32 rounding: rtol 1e-5 and atol 1e-5 of the reference's largest magnitude."""
    torch.testing.assert_close(actual, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def fixture_network(fx: dict) -> torch.nn.Module:
    net = build_network(fx["meta"]["network"], fx["meta"]["network_kwargs"])
    net.load_state_dict(fx["state"], strict=True)
    return net.eval()


def fixture_precond(fx: dict, net: torch.nn.Module) -> P.Precond:
    """diffbench's wrapper built from EDM's recorded precond arguments."""
    meta = fx["meta"]
    kw = meta["precond_kwargs"]
    own = {k: kw[k] for k in PRECOND_CONSTANTS[meta["precond"]] if k in kw}
    return PRECOND_CLASSES[meta["precond"]](
        net,
        img_resolution=kw["img_resolution"],
        img_channels=kw["img_channels"],
        label_dim=kw["label_dim"],
        use_fp16=kw.get("use_fp16", False),
        **own,
    ).eval()


def net_inputs(fx: dict) -> tuple:
    return fx["x"], fx.get("class_labels"), fx.get("augment_labels")


def test_fixtures_cover_both_architectures_and_all_preconds():
    metas = [load_fixture(n)["meta"] for n in NAMES]
    assert {m["network"] for m in metas} == {"SongUNet", "DhariwalUNet"}
    assert {m["precond"] for m in metas} == set(PRECOND_CLASSES)
    song = [m["network_kwargs"] for m in metas if m["network"] == "SongUNet"]
    assert {k["embedding_type"] for k in song} == {"positional", "fourier"}
    assert {k["encoder_type"] for k in song} == {"standard", "skip", "residual"}
    assert {k["decoder_type"] for k in song} == {"standard", "skip"}
    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) < 2_000_000


@pytest.mark.parametrize("name", NAMES)
def test_keys_and_shapes_match_edm_layout(name):
    fx = load_fixture(name)
    net = build_network(fx["meta"]["network"], fx["meta"]["network_kwargs"])
    own = net.state_dict()
    assert sorted(own) == sorted(fx["state"])
    assert {k: tuple(v.shape) for k, v in own.items()} == {k: tuple(v.shape) for k, v in fx["state"].items()}
    net.load_state_dict(fx["state"], strict=True)


@pytest.mark.parametrize("name", NAMES)
def test_network_outputs_match_edm(name):
    fx = load_fixture(name)
    net = fixture_network(fx)
    x, labels, aug = net_inputs(fx)
    with torch.no_grad():
        y = net(x, fx["noise_labels"], labels, augment_labels=aug)
        y_noaug = net(x, fx["noise_labels"], labels)
    assert y.shape == fx["y"].shape and y.dtype == torch.float32
    assert_close_to_reference(y, fx["y"])
    assert_close_to_reference(y_noaug, fx["y_noaug"])
    if aug is not None:  # the augmentation input reaches the output
        assert (fx["y"] - fx["y_noaug"]).abs().max() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_diffbench_precond_matches_edm_precond(name):
    """diffbench.models.precond against EDM's VP/VE/iDDPM/EDM Precond classes, same weights and inputs."""
    fx = load_fixture(name)
    pre = fixture_precond(fx, fixture_network(fx))
    x, labels, aug = net_inputs(fx)
    kwargs = {} if aug is None else {"augment_labels": aug}
    with torch.no_grad():
        assert_close_to_reference(pre(x, fx["sigma"], labels, **kwargs), fx["D"])
        assert_close_to_reference(pre(x, fx["sigma"]), fx["D_nolabel"])
    np.testing.assert_allclose([pre.sigma_min, pre.sigma_max], fx["precond_sigma_range"].numpy(), rtol=1e-6)
    # iDDPM's u table is computed in float32 by both, in a different order: equal to float32 rounding
    torch.testing.assert_close(pre.round_sigma(fx["round_probe"]), fx["round_sigma"], rtol=1e-5, atol=0)
    if "u" in fx["precond_buffers"]:
        torch.testing.assert_close(pre.u, fx["precond_buffers"]["u"], rtol=1e-5, atol=0)


def test_dropout_only_in_training_mode():
    fx = load_fixture("song_ddpmpp")
    net = fixture_network(fx)
    x, labels, aug = net_inputs(fx)
    with torch.no_grad():
        a = net(x, fx["noise_labels"], labels, augment_labels=aug)
        net.train()
        torch.manual_seed(0)
        b = net(x, fx["noise_labels"], labels, augment_labels=aug)
    assert not torch.allclose(a, b)


def test_attention_heads_follow_the_architecture():
    """ADM: out_channels // 64 heads (none below 64 channels); DDPM++: one head where asked."""
    adm = build_network("DhariwalUNet", load_fixture("adm_iddpm")["meta"]["network_kwargs"])
    heads = {n: b.num_heads for n, b in adm.dec.items() if hasattr(b, "num_heads")}
    assert heads["4x4_in0"] == 1 and heads["8x8_block0"] == 0
    small = build_network("DhariwalUNet", load_fixture("adm_edm")["meta"]["network_kwargs"])
    assert all(getattr(b, "num_heads", 0) == 0 for b in [*small.enc.values(), *small.dec.values()])
    song = build_network("SongUNet", load_fixture("song_ddpmpp")["meta"]["network_kwargs"])
    assert song.dec["8x8_in0"].num_heads == 1 and song.dec["8x8_in1"].num_heads == 0
    assert song.enc["8x8_block0"].num_heads == 1 and song.enc["16x16_block0"].num_heads == 0


def test_build_network_refuses_unknown_names_and_arguments():
    with pytest.raises(UnknownNameError, match="SongUNet"):
        build_network("SongUNett", {})
    with pytest.raises(UnknownNameError):
        network_arguments("Nope")
    base = TINY
    with pytest.raises(ConfigError, match="model_chanels"):
        build_network("SongUNet", {**base, "model_chanels": 4})
    with pytest.raises(ConfigError, match="embedding_type 'sinusoid'"):
        build_network("SongUNet", {**base, "embedding_type": "sinusoid"})
    with pytest.raises(ConfigError, match="img_resolution"):
        build_network("DhariwalUNet", {"in_channels": 3, "out_channels": 3})
    assert network_arguments("SongUNet")[:3] == ("img_resolution", "in_channels", "out_channels")


@pytest.mark.gpu
def test_half_precision_on_cuda_matches_float32():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    fx = load_fixture("adm_iddpm")  # recorded with use_fp16=True
    pre = fixture_precond(fx, fixture_network(fx)).cuda()
    assert pre.use_fp16
    x, labels, aug = (t.cuda() if t is not None else None for t in net_inputs(fx))
    seen = []
    pre.model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad():
        half = pre(x, fx["sigma"].cuda(), labels, augment_labels=aug)
        full = pre(x, fx["sigma"].cuda(), labels, augment_labels=aug, force_fp32=True)
    assert seen == [torch.float16, torch.float32]
    assert half.dtype == torch.float32
    ref = fx["D"].cuda()
    torch.testing.assert_close(full, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    torch.testing.assert_close(half, ref, rtol=0, atol=2e-2 * float(ref.abs().max()))
