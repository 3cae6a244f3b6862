"""Non-EDM formats: diffusers UNet2DModel directories, state dicts with a sidecar, entry points, bad files."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from diffbench.errors import ConfigError, DiffbenchError, MissingDependencyError, ModelLoadError
from diffbench.models import diffusers_unet as du
from diffbench.models.precond import EDMPrecond, VEPrecond
from diffbench.models.registry import load_checkpoint

HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
needs_diffusers = pytest.mark.skipif(not HAS_DIFFUSERS, reason="diffusers (optional extra) is not installed")
HAS_EDM_PICKLE = importlib.util.find_spec("diffbench.models.edm_pickle") is not None

# ---------------------------------------------------------------- beta schedules


def test_linear_and_scaled_linear_closed_forms():
    b = du.make_betas("linear", beta_start=1e-4, beta_end=0.02, num_steps=1000)
    assert b[0] == 1e-4 and abs(b[-1] - 0.02) < 1e-15 and np.allclose(np.diff(b), (0.02 - 1e-4) / 999)
    s = du.make_betas("scaled_linear", beta_start=0.00085, beta_end=0.012, num_steps=50)
    assert np.allclose(np.diff(np.sqrt(s)), (0.012**0.5 - 0.00085**0.5) / 49, rtol=1e-12)


def test_cosine_schedule_reproduces_alpha_bar():
    """prod(1 - beta) = f(t_{k+1}) / f(0) where the 0.999 cap is inactive (Nichol & Dhariwal 2021, Eq. 17)."""
    T = 1000
    b = du.make_betas("squaredcos_cap_v2", num_steps=T)
    assert b.max() <= 0.999 and b[-1] == 0.999
    abar = np.cumprod(1 - b)
    f = [du.cosine_alpha_bar((k + 1) / T) / du.cosine_alpha_bar(0.0) for k in range(T - 1)]
    assert np.allclose(abar[: T - 1], f, rtol=1e-10, atol=1e-14)


def test_trained_betas_and_bad_schedule():
    assert np.array_equal(du.make_betas("linear", trained_betas=[0.1, 0.2]), [0.1, 0.2])
    with pytest.raises(ConfigError):
        du.make_betas("linear", trained_betas=[0.1, 1.5])
    with pytest.raises(DiffbenchError, match="Did you mean 'scaled_linear'"):
        du.make_betas("scaled_linaer")
    with pytest.raises(ConfigError, match="infinity"):
        du.betas_from_scheduler_config({"rescale_betas_zero_snr": True})


@needs_diffusers
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_betas_match_diffusers(schedule):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=200, beta_start=1e-4, beta_end=0.02, beta_schedule=schedule)
    ours = du.make_betas(schedule, beta_start=1e-4, beta_end=0.02, num_steps=200)
    # diffusers keeps betas in float32: agreement to float32 rounding
    np.testing.assert_allclose(ours, ref.betas.double().numpy(), rtol=2e-6, atol=1e-9)


# ---------------------------------------------------------------- diffusers directories

TINY_UNET = dict(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
    attention_head_dim=4,
)


def _save_tiny(
    path, *, prediction="epsilon", schedule="linear", trained=None, pipeline=False, safe=True, **unet_kwargs
):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(**{**TINY_UNET, **unet_kwargs}).eval()
    with torch.no_grad():  # random non-trivial weights everywhere (zero-initialised layers too)
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    kw = {"trained_betas": trained} if trained is not None else {}
    sched = DDPMScheduler(
        num_train_timesteps=len(trained) if trained is not None else 100,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule=schedule,
        prediction_type=prediction,
        clip_sample=False,
        **kw,
    )
    unet_dir, sched_dir = (path / "unet", path / "scheduler") if pipeline else (path, path)
    unet.save_pretrained(unet_dir, safe_serialization=safe)
    sched.save_pretrained(sched_dir)
    if pipeline:
        (path / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    return unet, sched


@needs_diffusers
@pytest.mark.parametrize(
    "prediction,schedule,trained",
    [
        ("epsilon", "linear", None),
        ("v_prediction", "squaredcos_cap_v2", None),
        ("sample", "scaled_linear", None),
        ("epsilon", "linear", list(np.linspace(2e-3, 0.05, 40))),
    ],
)
def test_diffusers_denoiser_matches_scheduler_x0(tmp_path, prediction, schedule, trained):
    """D(x; sigma_k) equals DDPMScheduler.step's pred_original_sample at x_t = x / sqrt(1 + sigma_k^2)."""
    unet, sched = _save_tiny(tmp_path, prediction=prediction, schedule=schedule, trained=trained)
    model = load_checkpoint(str(tmp_path))
    assert model.source_info["format"] == "diffusers" and len(model.source_info["sha256"]) == 64
    assert (model.img_resolution, model.img_channels, model.label_dim) == (8, 3, 0)
    abar = sched.alphas_cumprod.double()
    torch.manual_seed(1)
    for k in (0, 7, len(abar) // 2, len(abar) - 1):
        sigma = math.sqrt((1 - abar[k]) / abar[k])
        x_t = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            out = unet(x_t, k).sample
            ref = sched.step(out, k, x_t).pred_original_sample
            d = model(x_t * math.sqrt(1 + sigma**2), torch.full((2,), sigma))
        torch.testing.assert_close(d, ref, rtol=2e-4, atol=2e-4)
    # the sigma grid is the scheduler's (its float32 betas, accumulated in float64): sigma_min/max at its ends
    abar64 = torch.cumprod(1 - sched.betas.double(), 0)
    assert math.isclose(model.sigma_min, math.sqrt((1 - abar64[0]) / abar64[0]), rel_tol=1e-5)
    assert math.isclose(model.sigma_max, math.sqrt((1 - abar64[-1]) / abar64[-1]), rel_tol=1e-5)


@needs_diffusers
def test_diffusers_pipeline_layout_bin_weights_and_legacy_attention_names(tmp_path):
    unet, sched = _save_tiny(tmp_path, pipeline=True, safe=False)
    weights = tmp_path / "unet" / "diffusion_pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    legacy = {}
    for k, v in state.items():  # write the pre-0.15 attention names the google/ddpm-* files use
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if ".attentions." in k and f".{new}." in k:
                k = k.replace(f".{new}.", f".{old}.")
        legacy[k] = v
    assert any(".query." in k for k in legacy)
    torch.save(legacy, weights)
    model = load_checkpoint(str(tmp_path))
    x, sigma = torch.randn(1, 3, 8, 8), torch.tensor([1.3])
    k = int(model.index(sigma))
    s = float(model.sigmas[k])
    with torch.no_grad():
        ref = x - s * unet(x / math.sqrt(1 + s**2), k).sample
        torch.testing.assert_close(model(x, torch.tensor([s])), ref, rtol=1e-4, atol=1e-4)


@needs_diffusers
def test_diffusers_learned_variance_and_class_labels(tmp_path):
    unet, sched = _save_tiny(tmp_path, out_channels=6, num_class_embeds=5)
    model = load_checkpoint(str(tmp_path))
    assert model.label_dim == 5
    x, s = torch.randn(2, 3, 8, 8), float(model.sigmas[10])
    labels = torch.nn.functional.one_hot(torch.tensor([1, 4]), 5).float()
    with torch.no_grad():
        eps = unet(x / math.sqrt(1 + s**2), 10, class_labels=torch.tensor([1, 4])).sample[:, :3]
        torch.testing.assert_close(model(x, torch.full((2,), s), labels), x - s * eps, rtol=1e-4, atol=1e-4)


@needs_diffusers
def test_diffusers_weights_that_do_not_fit_the_config(tmp_path):
    _save_tiny(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["block_out_channels"] = [8, 32]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="state dict does not fit UNet2DModel.*wrong shape") as info:
        load_checkpoint(str(tmp_path))
    assert "\n" not in str(info.value)


@needs_diffusers
def test_diffusers_missing_scheduler_config(tmp_path):
    _save_tiny(tmp_path)
    (tmp_path / "scheduler_config.json").unlink()
    with pytest.raises(ModelLoadError, match="no scheduler_config.json"):
        load_checkpoint(str(tmp_path))


def test_missing_diffusers_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 8}))
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "linear"}))
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    with pytest.raises(MissingDependencyError, match=r"diffbench\[diffusers\]"):
        load_checkpoint(str(tmp_path))


def test_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="not a diffusers model"):
        load_checkpoint(str(tmp_path))


# ---------------------------------------------------------------- plain state dicts + sidecar

NET_KWARGS = dict(
    img_resolution=8,
    in_channels=3,
    out_channels=3,
    model_channels=8,
    channel_mult=[1, 2],
    num_blocks=1,
    attn_resolutions=[4],
    dropout=0.0,
)


def _tiny_songunet():
    from diffbench.models.nets import build_network

    torch.manual_seed(0)
    net = build_network("SongUNet", NET_KWARGS)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _write_state_dict(tmp_path, state, *, sidecar=None, name="net.pt"):
    path = tmp_path / name
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    side = (
        sidecar
        if sidecar is not None
        else {
            "network": "SongUNet",
            "network_kwargs": NET_KWARGS,
            "precond": "EDMPrecond",
            "precond_kwargs": {"sigma_data": 0.5},
        }
    )
    path.with_suffix(".json").write_text(json.dumps(side))
    return path


@pytest.mark.parametrize("name,prefix", [("net.pt", ""), ("net.pth", "model."), ("net.safetensors", "")])
def test_state_dict_with_sidecar_matches_direct_precond(tmp_path, name, prefix):
    net = _tiny_songunet()
    path = _write_state_dict(tmp_path, {prefix + k: v for k, v in net.state_dict().items()}, name=name)
    model = load_checkpoint(str(path))
    assert isinstance(model, EDMPrecond) and model.source_info["format"] == "state-dict"
    import hashlib

    assert model.source_info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    ref = EDMPrecond(net, img_resolution=8, img_channels=3, sigma_data=0.5).eval()
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 7.0])
    with torch.no_grad():
        torch.testing.assert_close(model(x, sigma), ref(x, sigma), rtol=0, atol=0)


def test_state_dict_that_does_not_fit_names_the_keys(tmp_path):
    state = _tiny_songunet().state_dict()
    first = sorted(state)[0]
    state.pop(first)
    state["extra.weight"] = torch.zeros(1)
    path = _write_state_dict(tmp_path, state)
    with pytest.raises(ModelLoadError, match=rf"missing {first}; unexpected extra.weight"):
        load_checkpoint(str(path))


def test_state_dict_shape_mismatch(tmp_path):
    state = _tiny_songunet().state_dict()
    key = next(k for k, v in state.items() if v.ndim == 4)
    state[key] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ModelLoadError, match=rf"wrong shape .*{key} \(1, 1, 1, 1\) vs"):
        load_checkpoint(str(_write_state_dict(tmp_path, state)))


class _Payload:
    pass


def test_state_dict_with_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "obj": _Payload()}, path)
    path.with_suffix(".json").write_text(
        json.dumps({"network": "SongUNet", "network_kwargs": NET_KWARGS, "precond": "EDMPrecond"})
    )
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_checkpoint(str(path))


def test_sidecar_problems(tmp_path):
    state = _tiny_songunet().state_dict()
    path = _write_state_dict(tmp_path, state)
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelLoadError, match="net.json .* is missing"):
        load_checkpoint(str(path))
    path.with_suffix(".json").write_text(json.dumps({"network": "SongUNet", "precond": "EDMPrecond", "colour": 1}))
    with pytest.raises(ConfigError, match="unknown keys colour"):
        load_checkpoint(str(path))
    path.with_suffix(".json").write_text(
        json.dumps({"network": "SongUNet", "network_kwargs": NET_KWARGS, "precond": "EDMPrecnod"})
    )
    with pytest.raises(DiffbenchError, match="Did you mean 'EDMPrecond'"):
        load_checkpoint(str(path))


def test_discrete_ddpm_precond_from_sidecar_beta_schedule(tmp_path):
    net = _tiny_songunet()
    side = {
        "network": "SongUNet",
        "network_kwargs": NET_KWARGS,
        "precond": "DiscreteDDPMPrecond",
        "precond_kwargs": {"beta_schedule": "linear", "num_train_timesteps": 1000, "prediction": "epsilon"},
    }
    model = load_checkpoint(str(_write_state_dict(tmp_path, net.state_dict(), sidecar=side)))
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    assert math.isclose(model.sigma_max, math.sqrt((1 - abar[-1]) / abar[-1]), rel_tol=1e-12)


# ---------------------------------------------------------------- bad files


def test_truncated_state_dict(tmp_path):
    path = _write_state_dict(tmp_path, _tiny_songunet().state_dict())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated") as info:
        load_checkpoint(str(path))
    assert "\n" not in str(info.value)


def test_wrong_formats(tmp_path):
    npz = tmp_path / "stats.npz"
    np.savez(npz, mu=np.zeros(4), sigma=np.eye(4))
    with pytest.raises(ModelLoadError, match="NumPy .npz"):
        load_checkpoint(str(npz))
    txt = tmp_path / "notes.pkl"
    txt.write_text("hello")
    with pytest.raises(ModelLoadError, match="not a checkpoint"):
        load_checkpoint(str(txt))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is empty"):
        load_checkpoint(str(empty))
    with pytest.raises(ModelLoadError, match="no such file"):
        load_checkpoint(str(tmp_path / "absent.pkl"))


@pytest.mark.skipif(not HAS_EDM_PICKLE, reason="diffbench.models.edm_pickle is not in this build yet")
def test_truncated_edm_pickle(tmp_path):
    import pickle

    path = tmp_path / "net.pkl"
    path.write_bytes(pickle.dumps({"ema": None, "pad": list(range(1000))}, protocol=4)[:100])
    with pytest.raises(DiffbenchError) as info:
        load_checkpoint(str(path))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- entry points

USER_MODULE = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        img_resolution, img_channels, label_dim = 4, 2, 0

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x, noise_labels, class_labels=None):
            return self.conv(x) * noise_labels.reshape(-1, 1, 1, 1)

    def ve():
        return Net(), {"precond": "VEPrecond", "img_resolution": 4, "img_channels": 2, "sigma_max": 50.0}

    def by_name():
        return Net(), "EDMPrecond"

    def ready():
        from diffbench.models.precond import VPPrecond
        return VPPrecond(Net(), img_resolution=4, img_channels=2)

    def broken():
        raise RuntimeError("no weights here")

    def junk():
        return 42

    NOT_CALLABLE = 3
""")


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_models_for_diffbench.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_models_for_diffbench"
    sys.modules.pop("my_models_for_diffbench", None)


def test_entry_point_network_and_parameterisation(user_module):
    model = load_checkpoint(f"{user_module}:ve")
    assert isinstance(model, VEPrecond) and model.sigma_max == 50.0
    assert model.source_info == {
        "spec": f"{user_module}:ve",
        "entry_point": f"{user_module}:ve",
        "sha256": None,
        "format": "entry-point",
    }
    x, sigma = torch.randn(3, 2, 4, 4), torch.tensor([0.5, 2.0, 10.0])
    with torch.no_grad():  # VE, EDM Table 1: D = x + sigma F(x; ln(sigma / 2))
        ref = x + sigma.reshape(-1, 1, 1, 1) * model.model(x, (sigma / 2).log())
        torch.testing.assert_close(model(x, sigma), ref)
    assert isinstance(load_checkpoint(f"{user_module}:by_name"), EDMPrecond)
    ready = load_checkpoint(f"{user_module}:ready")
    assert type(ready).__name__ == "VPPrecond" and not ready.training


@pytest.mark.parametrize(
    "attr,match",
    [
        ("broken", "raised RuntimeError: no weights here"),
        ("junk", "returned int"),
        ("NOT_CALLABLE", "not callable"),
        ("missing", "has no attribute 'missing'"),
    ],
)
def test_entry_point_errors(user_module, attr, match):
    with pytest.raises(ModelLoadError, match=match):
        load_checkpoint(f"{user_module}:{attr}")


def test_entry_point_module_not_found():
    with pytest.raises(ModelLoadError, match="cannot import 'no_such_pkg_xyz.models'"):
        load_checkpoint("no_such_pkg_xyz.models:make")


def test_entry_point_does_not_shadow_existing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a:b").write_text("not a model")
    with pytest.raises(ModelLoadError, match="not a checkpoint"):
        load_checkpoint("a:b")


def test_raw_network_classes_are_only_nn_modules():
    assert issubclass(du.UNet2DAdapter, nn.Module)
