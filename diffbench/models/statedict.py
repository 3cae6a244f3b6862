"""Plain state-dict checkpoints: tensors only (torch.load(weights_only=True) or safetensors) plus a sidecar.

The sidecar says how to rebuild the model; it is a JSON file beside the weights with the same stem
(`net.pt` + `net.json`), or the same fields in a checkpoints.toml entry:

    {"network": "SongUNet", "network_kwargs": {"img_resolution": 32, "in_channels": 3, "out_channels": 3},
     "precond": "EDMPrecond", "precond_kwargs": {"sigma_data": 0.5}}

`network` names a built-in architecture (diffbench.models.nets.build_network); `precond` one of the
preconditionings of EDM Table 1 registered below. img_resolution, img_channels and label_dim of the
preconditioning default to the network's img_resolution, in_channels and label_dim. DiscreteDDPMPrecond
takes `betas`, or `beta_schedule` with beta_start, beta_end, num_train_timesteps. The state dict may hold
the bare network's keys or the preconditioned model's ("model." prefix); `{"ema": {...}}`-style wrappers
with a single dict of tensors are unwrapped.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffbench.errors import ConfigError, MissingDependencyError, ModelLoadError

PRECONDS: dict[str, type[nn.Module]] = {}
SIDECAR_KEYS = ("network", "network_kwargs", "precond", "precond_kwargs")
_WRAPPER_KEYS = ("ema", "state_dict", "model", "net")
_BETA_KEYS = ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps", "trained_betas")


def register_precond(name: str, cls: type[nn.Module]) -> None:
    """Make a preconditioning available to sidecars and entry points by name; duplicates are refused."""
    if name in PRECONDS:
        raise ConfigError(f"preconditioning '{name}' is already registered")
    PRECONDS[name] = cls


def _register_builtin() -> None:
    from diffbench.models import precond as p

    for cls in (p.EDMPrecond, p.VPPrecond, p.VEPrecond, p.IDDPMPrecond, p.DiscreteDDPMPrecond):
        register_precond(cls.__name__, cls)


_register_builtin()


def build_precond(name: str, network: nn.Module, kwargs: Mapping[str, Any]) -> nn.Module:
    """Wrap a raw network in the named preconditioning (EDM Table 1) with its keyword arguments."""
    if name not in PRECONDS:
        from diffbench.errors import UnknownNameError

        raise UnknownNameError("preconditioning", name, PRECONDS)
    kwargs = dict(kwargs)
    if name == "DiscreteDDPMPrecond" and "betas" not in kwargs:
        from diffbench.models.diffusers_unet import betas_from_scheduler_config

        kwargs["betas"] = betas_from_scheduler_config({k: kwargs.pop(k) for k in _BETA_KEYS if k in kwargs})
    try:
        return PRECONDS[name](network, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for {name}: {exc}") from None


def load_tensor_file(path: Path) -> Any:
    """torch.load with weights_only=True; errors become one-line ModelLoadErrors."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise ModelLoadError(
                f"{path.name} holds Python objects besides tensors; refusing to unpickle it "
                f"(weights_only): {first[:160]}"
            ) from None
        raise ModelLoadError(f"{path.name} is not a readable torch file: {first[:160]}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path.name} is truncated or not a torch file: {first[:160]}") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .pt/.pth/.bin or .safetensors file as a flat {key: tensor} dict."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise MissingDependencyError("reading .safetensors needs the 'safetensors' package") from None
        try:
            obj: Any = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error type
            raise ModelLoadError(f"{path.name} is not a valid safetensors file: {exc}") from None
    else:
        obj = load_tensor_file(path)
    if isinstance(obj, Mapping):
        nested = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if nested and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = obj[nested[0]]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path.name} is not a state dict (a mapping of names to tensors)")
    return {str(k): v for k, v in obj.items()}


def key_list(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def describe_mismatch(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str | None:
    """'missing ...; unexpected ...; wrong shape k (file) vs (model)', or None when the keys and shapes fit."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    parts = []
    if missing:
        parts.append(f"missing {key_list(missing)}")
    if unexpected:
        parts.append(f"unexpected {key_list(unexpected)}")
    if shapes:
        parts.append(
            "wrong shape " + key_list([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes])
        )
    return "; ".join(parts) or None


def check_keys(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str) -> None:
    """Raise a one-line ModelLoadError naming missing, unexpected and mis-shaped keys."""
    problem = describe_mismatch(module.state_dict(), state_dict)
    if problem:
        raise ModelLoadError(f"state dict does not fit {what}: {problem}")


def read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON sidecar beside a state-dict file (same stem, .json)."""
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        raise ModelLoadError(
            f"{Path(path).name} is a bare state dict and {side.name} (which names its network "
            "and preconditioning) is missing beside it"
        )
    try:
        spec = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {side}: {exc}") from None
    if not isinstance(spec, dict):
        raise ModelLoadError(f"{side} must hold a JSON object with keys {', '.join(SIDECAR_KEYS)}")
    return spec


def validate_spec(spec: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Check a sidecar's keys and types; fill the preconditioning's image shape from the network's."""
    unknown = sorted(set(spec) - set(SIDECAR_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(unknown)} (valid: {', '.join(SIDECAR_KEYS)})")
    for key in ("network", "precond"):
        if not isinstance(spec.get(key), str):
            raise ConfigError(f"{where}: '{key}' must be a name, e.g. SongUNet / EDMPrecond")
    for key in ("network_kwargs", "precond_kwargs"):
        if not isinstance(spec.get(key, {}), Mapping):
            raise ConfigError(f"{where}: '{key}' must be an object")
    from diffbench.models.nets import NETWORKS

    if spec["network"] not in NETWORKS:  # name the class and the file that asks for it, not "unknown model"
        from diffbench.errors import ModelLoadError

        raise ModelLoadError(
            f"{where} names network class '{spec['network']}', which diffbench does not know "
            f"(known: {', '.join(sorted(NETWORKS))})"
        )
    net_kwargs = dict(spec.get("network_kwargs", {}))
    pre_kwargs = dict(spec.get("precond_kwargs", {}))
    for pre_key, net_key, default in (
        ("img_resolution", "img_resolution", None),
        ("img_channels", "in_channels", None),
        ("label_dim", "label_dim", 0),
    ):
        value = net_kwargs.get(net_key, default)
        if pre_key not in pre_kwargs and value is not None:
            pre_kwargs[pre_key] = value
    for key in ("img_resolution", "img_channels"):
        if key not in pre_kwargs:
            raise ConfigError(f"{where}: precond_kwargs needs '{key}' (or network_kwargs its counterpart)")
    return {
        "network": spec["network"],
        "network_kwargs": net_kwargs,
        "precond": spec["precond"],
        "precond_kwargs": pre_kwargs,
    }


def _build_network(name: str, kwargs: Mapping[str, Any], *, where: str = "sidecar") -> nn.Module:
    """A built-in raw network by class name (diffbench.models.nets)."""
    from diffbench.errors import ModelLoadError, UnknownNameError
    from diffbench.models.nets import build_network

    try:
        return build_network(name, dict(kwargs))
    except UnknownNameError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"bad network_kwargs for {name}: {exc}") from None


def load_state_dict_checkpoint(
    path: str | Path, *, spec: Mapping[str, Any] | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild network + preconditioning from the sidecar (or `spec`) and load the file's tensors into it."""
    path = Path(path)
    where = f"registry entry for {path.name}" if spec is not None else str(path.with_suffix(".json"))
    spec = validate_spec(spec if spec is not None else read_sidecar(path), where=where)
    state = read_state_dict(path)
    network = _build_network(spec["network"], spec["network_kwargs"], where=where)
    model = build_precond(spec["precond"], network, spec["precond_kwargs"])
    if all(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items()}
    check_keys(network, state, what=spec["network"])
    network.load_state_dict(state, strict=True)
    return model.to(device).eval()
