"""Noise-conditional classifiers for classifier guidance: the built-in digits one and a user's by entry point.

A noise-conditional classifier maps a noisy image x = y + sigma * n [B, C, H, W] (EDM units, the sampler's
state) and its noise level sigma [B] to class logits [B, K]: p(c | x, sigma), the classifier of Dhariwal &
Nichol 2021 (Sec. 4) trained on noisy images. `load_classifier(spec)` resolves a registry name (the shipped
`digits-noisy-classifier`, sha256-verified like every built-in) or an entry point `package.module:factory`
whose factory returns such a module; one whose forward does not take sigma is refused with one line.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffbench.errors import ConfigError, DiffbenchError, ModelLoadError

BUILTIN = "digits-noisy-classifier"  # its checkpoints.toml entry


class NoisyDigitsNet(nn.Module):
    """(x [B, 1, 8, 8] noisy, sigma [B]) -> logits [B, 10]: a small CNN told its noise level.

    Input preconditioning as EDM's denoiser (Karras et al. 2022, Table 1): the image enters as c_in x with
    c_in = 1 / sqrt(sigma^2 + sigma_data^2) (unit variance at every sigma) and sigma as c_noise = ln(sigma) / 4,
    embedded by sin/cos features and added per channel after each convolution. SiLU activations keep the
    input gradient (what guidance uses) smooth.
    """

    def __init__(self, *, num_classes: int = 10, channels: int = 32, emb: int = 64, sigma_data: float = 0.753):
        super().__init__()
        self.sigma_data = float(sigma_data)
        self.num_classes = self.label_dim = int(num_classes)
        self.img_channels, self.img_resolution = 1, 8
        self.register_buffer("freqs", 2.0 ** torch.arange(4, dtype=torch.float32), persistent=False)
        self.emb = nn.Sequential(nn.Linear(9, emb), nn.SiLU(), nn.Linear(emb, emb), nn.SiLU())
        c = channels
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.shift1, self.shift2, self.shift3 = nn.Linear(emb, c), nn.Linear(emb, 2 * c), nn.Linear(emb, 2 * c)
        self.fc = nn.Linear(2 * c * 16 + emb, 128)
        self.out = nn.Linear(128, self.num_classes)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        c_in = 1 / (sigma**2 + self.sigma_data**2).sqrt()  # EDM Table 1
        c_noise = sigma.log() / 4  # EDM Table 1
        angles = c_noise[:, None] * self.freqs
        e = self.emb(torch.cat([c_noise[:, None], angles.sin(), angles.cos()], dim=1))
        h = c_in.reshape(-1, 1, 1, 1) * x.to(torch.float32)
        h = F.silu(self.conv1(h) + self.shift1(e)[:, :, None, None])
        h = F.avg_pool2d(F.silu(self.conv2(h) + self.shift2(e)[:, :, None, None]), 2)
        h = F.silu(self.conv3(h) + self.shift3(e)[:, :, None, None])
        h = F.silu(self.fc(torch.cat([h.flatten(1), e], dim=1)))
        return self.out(h)


@dataclass(frozen=True)
class LoadedClassifier:
    """A noise-conditional classifier with its identity: spec, sha256 (weights file, or for an entry point a
    hash of the entry point and its parameters) and number of classes."""

    module: nn.Module
    spec: str
    sha256: str
    num_classes: int | None

    def info(self) -> dict[str, Any]:
        return {"spec": self.spec, "sha256": self.sha256, "classes": self.num_classes}


def takes_sigma(module: Any) -> bool:
    """True when the module's forward takes (x, sigma): at least two positional parameters."""
    fn = module.forward if isinstance(module, nn.Module) else module
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _fingerprint(spec: str, module: Any) -> str:
    """sha256 of the entry point string and every parameter and buffer of the module it returned."""
    h = hashlib.sha256(spec.encode())
    if isinstance(module, nn.Module):
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def load_classifier(spec: str) -> LoadedClassifier:
    """The noise-conditional classifier `spec` (registry name or package.module:factory), on the CPU, in eval
    mode, loaded once per process. Raises ModelLoadError / ConfigError (one line) for an unknown name, a
    factory that fails, or a module that does not take sigma."""
    from diffbench.models.entrypoint import call_factory, is_entry_point
    from diffbench.models.registry import entries, fetch_entry

    known = entries()
    if spec in known:
        entry = known[spec]
        if entry.network != "NoisyDigitsClassifier":
            raise ConfigError(f"'{spec}' is not a noise-conditional classifier (give {BUILTIN} or module:factory)")
        got = fetch_entry(entry)
        net = NoisyDigitsNet(**dict(entry.network_kwargs))
        try:
            net.load_state_dict(torch.load(got.path, map_location="cpu", weights_only=True))
        except Exception as exc:  # a foreign or truncated file
            raise ModelLoadError(f"cannot load {spec}: {type(exc).__name__}: {str(exc)[:200]}") from None
        return LoadedClassifier(net.eval().requires_grad_(False), spec, got.sha256, net.num_classes)
    if not is_entry_point(spec):
        raise ConfigError(
            f"--classifier '{spec}' is neither a classifier name ({BUILTIN}) nor an entry point package.module:factory"
        )
    module = call_factory(spec)
    if not callable(module):
        raise ModelLoadError(f"entry point {spec} returned {type(module).__name__}, not a module (x, sigma) -> logits")
    if not takes_sigma(module):
        raise ConfigError(
            f"classifier {spec} does not take sigma: classifier guidance needs a noise-conditional classifier "
            "forward(x, sigma) -> logits"
        )
    if isinstance(module, nn.Module):
        module = module.eval().requires_grad_(False)
    classes = getattr(module, "num_classes", None) or getattr(module, "label_dim", None)
    return LoadedClassifier(module, spec, _fingerprint(spec, module), int(classes) if classes else None)


class ClassifierGradient(nn.Module):
    """The evaluator's view of a classifier: (x [B, ...], sigma [B], one-hot labels [B, K]) -> grad_x log p(c | x,
    sigma) [B, ...], one forward and one backward pass (Dhariwal & Nichol 2021, Sec. 4.1: the gradient of the
    classifier's log-probability of the intended class c with respect to the noisy input)."""

    def __init__(self, loaded: LoadedClassifier, label_dim: int):
        super().__init__()
        self.classifier = loaded.module
        self.label_dim = int(label_dim)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if class_labels is None:
            raise ConfigError("classifier guidance needs the intended class of each sample")
        labels = class_labels.argmax(dim=1)
        with torch.enable_grad():
            xin = x.detach().to(torch.float32).requires_grad_(True)
            logits = self.classifier(xin, sigma.to(torch.float32))
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ConfigError(f"the classifier returned {got}, expected logits [{x.shape[0]}, classes]")
            logp = torch.log_softmax(logits.to(torch.float64), dim=1).gather(1, labels.reshape(-1, 1)).sum()
            (grad,) = torch.autograd.grad(logp, xin)
        if not math.isfinite(float(grad.abs().sum())):
            raise DiffbenchError("the classifier's gradient is not finite")
        return grad.to(x.dtype)
