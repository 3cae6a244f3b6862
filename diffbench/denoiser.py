"""The one interface everything meets at: an EDM-style denoiser D(x; sigma, class), and the evaluator solvers call."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch

from diffbench.errors import ConfigError

REQUIRED_ATTRS = ("sigma_min", "sigma_max", "round_sigma", "img_channels", "img_resolution", "label_dim")


@runtime_checkable
class Denoiser(Protocol):
    """EDM's network interface (Karras et al. 2022, Sec. 5): D(x; sigma) with x = y + sigma * n."""

    sigma_min: float
    sigma_max: float
    img_channels: int
    img_resolution: int
    label_dim: int

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> Any: ...

    def round_sigma(self, sigma: Any) -> Any: ...


def check_denoiser(obj: Any) -> None:
    """Refuse an object that lacks the Denoiser attributes, naming what is missing."""
    missing = [a for a in REQUIRED_ATTRS if not hasattr(obj, a)]
    if not callable(obj):
        missing.insert(0, "__call__/forward")
    if missing:
        raise ConfigError(f"{type(obj).__name__} is not a Denoiser: it lacks {', '.join(missing)}")


def sample_shape(denoiser: Denoiser) -> tuple[int, ...]:
    """Shape of one sample: `sample_shape` if the model declares one, else (C, H, W)."""
    shape = getattr(denoiser, "sample_shape", None)
    if shape is not None:
        return tuple(int(s) for s in shape)
    return (int(denoiser.img_channels), int(denoiser.img_resolution), int(denoiser.img_resolution))


def model_dtype(denoiser: Denoiser) -> torch.dtype | None:
    """The dtype of the network's parameters (None for parameter-free models)."""
    if isinstance(denoiser, torch.nn.Module):
        for p in denoiser.parameters():
            return p.dtype
    return None


MAIN = "main"  # the name of the network a spec samples (guidance adds others beside it)
_BOUND: Any = object()  # "the labels the evaluator bound" (None means: no label, the null label)


class BoundDenoiser(Protocol):
    """What a solver calls: D(x; sigma) with labels bound, x [B, ...] and sigma a float or a [B] tensor."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor: ...

    def round_sigma(self, sigma: Any) -> Any: ...


class NetworkCall(Protocol):
    """One counted network evaluation inside a combine function: net(name, x, sigma[, labels=...]) -> D."""

    def __call__(self, name: str, x: torch.Tensor, sigma: torch.Tensor, labels: Any = ...) -> torch.Tensor: ...


# How one evaluation D(x; sigma) is made from the networks: plain (today) or, later, a guidance rule, which
# comes with its cost(sigma) (network evaluations per sample of one evaluation) for plan(..., cost=...).
Combine = Callable[[NetworkCall, torch.Tensor, torch.Tensor], torch.Tensor]


def plain(net: NetworkCall, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """D(x; sigma, c) of the main network with the bound labels: one network evaluation (EDM, Alg. 1)."""
    return net(MAIN, x, sigma)


class Evaluator:
    """The one layer between solvers and networks: binds labels, combines networks, counts per network per sample.

    Solvers call it as D(x, sigma) (x [B, ...] in the solver's dtype, sigma a float or a [B] tensor in EDM
    units) and get D in x's dtype. `networks` maps names to Denoisers; `combine(net, x, sigma)` makes one
    evaluation from counted network calls `net(name, x, sigma, labels=...)` (labels default to the bound ones;
    `labels=None` is the null label). A network call on B' rows for a batch of B samples counts B'/B per sample,
    so a batched pair (2B rows) counts 2. `counts` is read once per batch and must equal the plan's NFE.
    """

    def __init__(
        self,
        networks: Denoiser | Mapping[str, Denoiser],
        batch_size: int,
        *,
        class_labels: torch.Tensor | None = None,
        combine: Combine = plain,
    ):
        self.networks: dict[str, Denoiser] = (
            dict(networks) if isinstance(networks, Mapping) else {MAIN: networks}  # type: ignore[arg-type]
        )
        if MAIN not in self.networks:
            raise ConfigError(f"the evaluator needs a '{MAIN}' network, got {', '.join(self.networks) or 'none'}")
        self.batch_size = int(batch_size)
        self.class_labels = class_labels  # integer indices [B] (None: unconditional)
        self.combine = combine
        self._rows = dict.fromkeys(self.networks, 0)
        self._bound: dict[str, torch.Tensor | None] = {}  # the bound labels' one-hot rows, per network

    @property
    def counts(self) -> dict[str, float]:
        """Network evaluations per sample so far, per network name."""
        return {name: rows / self.batch_size for name, rows in self._rows.items()}

    @property
    def nfe(self) -> float:
        """Network evaluations per sample so far, all networks together."""
        return sum(self._rows.values()) / self.batch_size

    def round_sigma(self, sigma: Any) -> Any:
        return self.networks[MAIN].round_sigma(sigma)

    def one_hot(self, name: str, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """Integer labels [B'] as the one-hot rows [B', label_dim] network `name` takes (None: no label)."""
        dim = int(getattr(self.networks[name], "label_dim", 0) or 0)
        if labels is None or not dim:
            return None
        return torch.eye(dim, device=device)[labels.to(device)]

    def network(self, name: str, x: torch.Tensor, sigma: torch.Tensor, labels: Any = _BOUND) -> torch.Tensor:
        """One counted evaluation of network `name` on x [B', ...] at sigma [B'] (float64) -> D, x's dtype."""
        if name not in self.networks:
            raise KeyError(f"no network '{name}' in this evaluator ({', '.join(self.networks)})")
        if labels is _BOUND:
            if name not in self._bound:
                self._bound[name] = self.one_hot(name, self.class_labels, x.device)
            one_hot = self._bound[name]
        else:
            one_hot = self.one_hot(name, labels, x.device)
        self._rows[name] += x.shape[0]
        out = self.networks[name](x, sigma, one_hot)
        return out.to(x.dtype)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sig = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        if sig.ndim == 0:
            sig = sig.expand(x.shape[0])
        return self.combine(self.network, x, sig)
