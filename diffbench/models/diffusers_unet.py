"""diffusers UNet2DModel directories (DDPM / DDIM checkpoints) as Denoisers through DiscreteDDPMPrecond.

A directory holds the UNet's config.json and weights, and the scheduler's scheduler_config.json, either
side by side (google/ddpm-cifar10-32) or as a pipeline (model_index.json, unet/, scheduler/). The beta
schedule is rebuilt here from its formula; the weights load with safetensors or torch.load(weights_only=True),
never through pickle code. diffusers itself is an optional extra, imported only when a model is built.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffbench.errors import ConfigError, MissingDependencyError, ModelLoadError

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
# UNet2DModel's old attention blocks used these names (diffusers < 0.15 checkpoints such as google/ddpm-*)
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def cosine_alpha_bar(t: float, s: float = 0.008) -> float:
    """abar(t) = cos^2((t + s) / (1 + s) * pi / 2) (Nichol & Dhariwal 2021, Eq. 17; f(0) cancels)."""
    return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def make_betas(
    schedule: str,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    num_steps: int = 1000,
    trained_betas: Sequence[float] | None = None,
) -> np.ndarray:
    """The beta schedule of a discrete DDPM, in float64 (names follow diffusers' `beta_schedule`)."""
    if trained_betas is not None:
        betas = np.asarray(trained_betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) == 0 or not np.all((betas > 0) & (betas < 1)):
            raise ConfigError("trained_betas must be a non-empty list of numbers in (0, 1)")
        return betas
    if num_steps < 1:
        raise ConfigError(f"num_train_timesteps must be positive, got {num_steps}")
    if schedule == "linear":  # Ho et al. 2020, Sec. 4
        return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    if schedule == "scaled_linear":  # Rombach et al. 2022 (LDM): linear in sqrt(beta)
        return np.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=np.float64) ** 2
    if schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, Eq. 17, betas clipped at 0.999
        t = np.arange(num_steps, dtype=np.float64) / num_steps
        ratio = np.array([cosine_alpha_bar(a + 1 / num_steps) / cosine_alpha_bar(a) for a in t])
        return np.minimum(1 - ratio, 0.999)
    if schedule == "sigmoid":  # Xu et al. 2022 (GeoDiff): sigmoid of a linear ramp on [-6, 6]
        ramp = np.linspace(-6, 6, num_steps, dtype=np.float64)
        return 1 / (1 + np.exp(-ramp)) * (beta_end - beta_start) + beta_start
    from diffbench.errors import UnknownNameError

    raise UnknownNameError("beta schedule", schedule, BETA_SCHEDULES)


def betas_from_scheduler_config(cfg: dict[str, Any]) -> np.ndarray:
    """Betas of a diffusers DDPM/DDIM scheduler config (the keys of DDPMScheduler's constructor)."""
    if cfg.get("rescale_betas_zero_snr"):
        raise ConfigError("rescale_betas_zero_snr schedules end at sigma = infinity; not supported")
    return make_betas(
        str(cfg.get("beta_schedule", "linear")),
        beta_start=float(cfg.get("beta_start", 1e-4)),
        beta_end=float(cfg.get("beta_end", 0.02)),
        num_steps=int(cfg.get("num_train_timesteps", 1000)),
        trained_betas=cfg.get("trained_betas"),
    )


class UNet2DAdapter(nn.Module):
    """Call UNet2DModel as `model(x_t, timesteps, class_labels=None)` (one-hot labels to indices)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None = None):
        if class_labels is not None:
            class_labels = class_labels.argmax(dim=1)
        t = timesteps.reshape(-1).to(x.device).expand(x.shape[0]) if timesteps.numel() == 1 else timesteps
        return self.unet(x, t, class_labels=class_labels, return_dict=False)[0]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data


def locate(path: Path) -> tuple[Path, Path]:
    """(unet directory, scheduler_config.json) of a diffusers model or pipeline directory."""
    path = Path(path)
    for unet_dir in (path / "unet", path):
        if (unet_dir / "config.json").is_file():
            break
    else:
        raise ModelLoadError(f"{path} is not a diffusers model directory: no config.json or unet/config.json")
    for sched in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json"):
        if sched.is_file():
            return unet_dir, sched
    raise ModelLoadError(f"{path} has no scheduler_config.json: the noise schedule of the model is unknown")


def weight_file(unet_dir: Path) -> Path:
    """The UNet's weights: safetensors preferred over the .bin torch file."""
    for name in WEIGHT_FILES:
        if (unet_dir / name).is_file():
            return unet_dir / name
    raise ModelLoadError(f"{unet_dir} has no weights ({' or '.join(WEIGHT_FILES)})")


def rename_legacy_keys(state_dict: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Map old attention parameter names (query/key/value/proj_attn) to the names the model expects."""
    out = {}
    for key, value in state_dict.items():
        if key not in expected:
            stem, _, leaf = key.rpartition(".")
            base, _, old = stem.rpartition(".")
            new = f"{base}.{_LEGACY_ATTENTION[old]}.{leaf}" if old in _LEGACY_ATTENTION else key
            key = new if new in expected else key
        out[key] = value
    return out


def load_diffusers(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """A diffusers UNet2DModel directory as a Denoiser (DiscreteDDPMPrecond over the scheduler's betas)."""
    from diffbench.models.precond import PREDICTIONS, DiscreteDDPMPrecond
    from diffbench.models.statedict import check_keys, read_state_dict

    unet_dir, sched_path = locate(Path(path))
    cfg, sched = _read_json(unet_dir / "config.json"), _read_json(sched_path)
    cls = cfg.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ModelLoadError(f"{unet_dir / 'config.json'} describes a {cls}; only UNet2DModel is supported")
    prediction = str(sched.get("prediction_type", "epsilon"))
    if prediction not in PREDICTIONS:
        raise ModelLoadError(f"{sched_path}: prediction_type '{prediction}' is not one of {', '.join(PREDICTIONS)}")
    if cfg.get("class_embed_type") is not None:
        raise ModelLoadError(
            f"class_embed_type '{cfg['class_embed_type']}' is not supported "
            "(only num_class_embeds with an embedding table)"
        )
    size = cfg.get("sample_size", 32)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ModelLoadError(f"non-square sample_size {list(size)} is not supported")
        size = size[0]
    try:
        betas = betas_from_scheduler_config(sched)
    except ConfigError as exc:
        raise ModelLoadError(f"{sched_path}: {exc}") from None
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise MissingDependencyError(
            "diffusers models need the optional extra: pip install 'diffbench[diffusers]'"
        ) from None
    weights = weight_file(unet_dir)
    state = read_state_dict(weights)
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # old configs carry keys diffusers warns about; they are harmless
    try:
        unet = UNet2DModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{unet_dir / 'config.json'}: cannot build UNet2DModel ({exc})") from None
    finally:
        diffusers_logging.set_verbosity(level)
    state = rename_legacy_keys(state, set(unet.state_dict()))
    check_keys(unet, state, what=f"UNet2DModel from {unet_dir / 'config.json'}")
    unet.load_state_dict(state, strict=True)
    in_ch, out_ch = int(cfg.get("in_channels", 3)), int(cfg.get("out_channels", 3))
    denoiser = DiscreteDDPMPrecond(
        UNet2DAdapter(unet),
        betas=betas,
        prediction=prediction,
        img_resolution=int(size),
        img_channels=in_ch,
        label_dim=int(cfg.get("num_class_embeds") or 0),
        out_channels=in_ch if out_ch != in_ch else None,  # learned-variance models output 2C channels
    )
    return denoiser.to(device).eval()
