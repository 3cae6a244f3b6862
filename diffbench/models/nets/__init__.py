"""diffbench's own U-Nets for EDM checkpoints: DDPM++/NCSN++ (SongUNet), ADM (DhariwalUNet), built by name."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from diffbench.errors import ConfigError, UnknownNameError
from diffbench.models.nets.dhariwal_unet import DhariwalUNet
from diffbench.models.nets.song_unet import SongUNet

NETWORKS: dict[str, type[nn.Module]] = {}


def register_network(name: str, cls: type[nn.Module]) -> None:
    """Add a network class under the class name EDM's pickles record; refuses duplicates."""
    if name in NETWORKS:
        raise ValueError(f"network '{name}' is already registered")
    NETWORKS[name] = cls


register_network("SongUNet", SongUNet)
register_network("DhariwalUNet", DhariwalUNet)


def network_arguments(class_name: str) -> tuple[str, ...]:
    """The constructor arguments of a registered network, in EDM's positional order."""
    if class_name not in NETWORKS:
        raise UnknownNameError("network", class_name, NETWORKS)
    return tuple(NETWORKS[class_name].ARG_ORDER)


def build_network(class_name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """Build a registered network from its recorded constructor arguments (EDM's init_kwargs)."""
    if class_name not in NETWORKS:
        raise UnknownNameError("network", class_name, NETWORKS)
    cls = NETWORKS[class_name]
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(kwargs) - set(params) - {"self"})
    if unknown:
        raise ConfigError(f"{class_name} does not take argument(s) {', '.join(unknown)}")
    missing = [n for n, p in params.items() if n != "self" and p.default is inspect.Parameter.empty and n not in kwargs]
    if missing:
        raise ConfigError(f"{class_name} needs argument(s) {', '.join(missing)}")
    try:
        return cls(**dict(kwargs))
    except (TypeError, ValueError, ZeroDivisionError, RuntimeError) as e:
        raise ConfigError(f"{class_name} cannot be built from {dict(kwargs)}: {e}") from None


__all__ = ["DhariwalUNet", "NETWORKS", "SongUNet", "build_network", "network_arguments", "register_network"]
