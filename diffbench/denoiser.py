"""The one interface everything meets at: an EDM-style denoiser D(x; sigma, class), and its counting wrapper."""

from __future__ import annotations

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


def sample_shape(denoiser: Any) -> tuple[int, ...]:
    """Shape of one sample: `sample_shape` if the model declares one, else (C, H, W)."""
    shape = getattr(denoiser, "sample_shape", None)
    if shape is not None:
        return tuple(int(s) for s in shape)
    return (int(denoiser.img_channels), int(denoiser.img_resolution), int(denoiser.img_resolution))


def model_dtype(denoiser: Any) -> torch.dtype | None:
    """The dtype of the network's parameters (None for parameter-free models)."""
    if isinstance(denoiser, torch.nn.Module):
        for p in denoiser.parameters():
            return p.dtype
    return None


class CountingDenoiser:
    """Bind class labels to a Denoiser and count real evaluations per sample; solvers call D(x, sigma).

    A call on a batch of B' rows for a run of B samples counts B'/B evaluations per sample, so batched
    guidance (2B rows) counts 2. The count is read once per batch by the runner and must equal the plan.
    """

    def __init__(self, denoiser: Any, batch_size: int, class_labels: torch.Tensor | None = None):
        self.denoiser = denoiser
        self.batch_size = int(batch_size)
        self.class_labels = class_labels
        self.rows = 0

    @property
    def nfe(self) -> float:
        """Network evaluations per sample so far."""
        return self.rows / self.batch_size

    def round_sigma(self, sigma):
        return self.denoiser.round_sigma(sigma)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        self.rows += x.shape[0]
        out = self.denoiser(x, sigma, self.class_labels)
        return out.to(x.dtype)
