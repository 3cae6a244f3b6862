"""A user's own model through an entry point `package.module:factory`.

The factory is called without arguments and returns either a ready Denoiser (an object with the
attributes of diffbench.denoiser.Denoiser), or a pair `(network, parameterisation)`: the raw network
F(x, noise_labels, class_labels=None) and how to precondition it, as a mapping
`{"precond": "EDMPrecond", "img_resolution": 32, "img_channels": 3, "label_dim": 0, ...}` (the other keys
are the preconditioning's keyword arguments, EDM Table 1) or just a preconditioning name when the network
carries img_resolution / img_channels / label_dim itself. Importing the module runs the user's installed
code by design; nothing is executed from a checkpoint file.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diffbench.errors import DiffbenchError, ModelLoadError

ENTRY_POINT = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_entry_point(spec: str) -> bool:
    """True for strings of the form package.module:factory (dotted names on both sides)."""
    return bool(ENTRY_POINT.match(spec))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def resolve(spec: str) -> Any:
    """Import `package.module` and return the attribute path after the colon."""
    if not is_entry_point(spec):
        raise ModelLoadError(f"'{spec}' is not an entry point of the form package.module:factory")
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"cannot import '{module_name}' for entry point {spec}: {_one_line(exc)}") from None
    except Exception as exc:  # the user's module failed while importing
        raise ModelLoadError(f"importing '{module_name}' failed: {_one_line(exc)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"entry point {spec}: '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj


def call_factory(spec: str, *, name: str = "entry point", error: type[DiffbenchError] = ModelLoadError) -> Any:
    """What the factory named by `spec` (package.module:factory) returns; a factory that is not callable or
    raises is one `error` line, named `name` (the flag or "entry point")."""
    factory = resolve(spec)
    if not callable(factory):
        raise error(f"{name} {spec} is not callable")
    try:
        return factory()
    except DiffbenchError:
        raise
    except Exception as exc:
        raise error(f"{name} {spec} raised {_one_line(exc)}") from None


def load_entry_point(spec: str, *, device: str | torch.device = "cpu") -> nn.Module:
    """Call the factory named by `spec` and turn what it returns into a Denoiser."""
    from diffbench.denoiser import REQUIRED_ATTRS
    from diffbench.models.statedict import build_precond

    out = call_factory(spec)
    if callable(out) and all(hasattr(out, a) for a in REQUIRED_ATTRS):
        model = out
    elif isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], nn.Module):
        network, param = out
        if isinstance(param, str):
            kwargs: dict[str, Any] = {"precond": param}
            for key, attr, default in (
                ("img_resolution", "img_resolution", None),
                ("img_channels", "img_channels", None),
                ("label_dim", "label_dim", 0),
            ):
                value = getattr(network, attr, default)
                if value is None:
                    raise ModelLoadError(
                        f"entry point {spec}: the network has no '{attr}'; return a mapping "
                        "with precond, img_resolution, img_channels, label_dim instead"
                    )
                kwargs[key] = value
        elif isinstance(param, Mapping) and isinstance(param.get("precond"), str):
            kwargs = dict(param)
        else:
            raise ModelLoadError(
                f"entry point {spec}: the parameterisation must be a preconditioning name or a "
                "mapping with a 'precond' key"
            )
        name = kwargs.pop("precond")
        model = build_precond(name, network, kwargs)
    else:
        raise ModelLoadError(
            f"entry point {spec} returned {type(out).__name__}; expected a Denoiser or a pair "
            "(network, parameterisation)"
        )
    if isinstance(model, nn.Module):
        model = model.to(device).eval()
    return model
