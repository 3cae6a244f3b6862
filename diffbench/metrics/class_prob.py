"""Metrics of guided sampling from a clean classifier's p(c | x) of each sample's intended class c: accuracy,
and E[1/p(c | x)], the quantity guidance provably lowers (Li & Jiao 2025, arXiv 2505.01382), with quantiles.

The classifier is the built-in `digits` CNN (metrics/classifier.py, its weights in float64) on the samples
quantized to uint8 once,
as every metric sees them; so these metrics apply to the built-in 8x8 digits models, conditional ones (each
sample's class is the label it was drawn or asked for). A user's clean classifier replaces it by entry point
(`--eval-classifier package.module:factory`: the factory returns a module taking the quantized samples as
float32 x = u / 127.5 - 1 [B, C, H, W] in [-1, 1] and returning logits [B, K], or a tuple whose last item is the
logits); its identity, the entry point string and a sha256 of its parameters, enters the cell's identity.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffbench.errors import ConfigError

QUANTILES = (50, 90, 99)  # percentiles of 1/p reported beside the mean (1/p is heavy-tailed)


def intended_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(c | x) [B] of the intended classes c = labels [B] under softmax(logits [B, K]), in float64."""
    logp = torch.log_softmax(logits.to(torch.float64), dim=1)
    return logp.gather(1, labels.to(torch.int64).reshape(-1, 1).to(logp.device)).reshape(-1)


def accuracy_and_inverse_prob(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(share of argmax == c, mean of 1/p(c | x)) of one set of samples: the direct computation, for reference."""
    hit = (logits.argmax(dim=1).cpu() == labels.cpu()).to(torch.float64).mean()
    inv = torch.exp(-intended_log_probs(logits, labels)).mean()
    return float(hit), float(inv)


@functools.lru_cache(maxsize=1)
def _float64_net() -> torch.nn.Module:
    from diffbench.metrics.classifier import digits_classifier

    return copy.deepcopy(digits_classifier("cpu").net).to(torch.float64).eval()


def classifier_logits(images: torch.Tensor) -> torch.Tensor:
    """Logits [B, 10] of uint8 images under the shipped digits classifier, evaluated in float64 on the CPU, so
    a sample's 1/p does not depend on the batch it was scored in (1/p magnifies float32 rounding)."""
    from diffbench.metrics.classifier import images_to_input

    with torch.no_grad():
        return _float64_net()(images_to_input(images).to(torch.float64))[1]


# ---- as registered metrics (diffbench.metrics.registry) -------------------------------------------------


@functools.lru_cache(maxsize=4)
def user_classifier(spec: str) -> tuple[torch.nn.Module, str]:
    """(module, identity) of a clean classifier given by entry point `package.module:factory`; identity is
    'spec@' + the first 16 hex digits of a sha256 of its parameters and buffers. Raises ConfigError."""
    import hashlib

    from diffbench.models.entrypoint import call_factory, is_entry_point

    if not is_entry_point(spec):
        raise ConfigError(f"--eval-classifier '{spec}' is not an entry point package.module:factory")
    module = call_factory(spec, name="--eval-classifier", error=ConfigError)
    if not callable(module):
        raise ConfigError(f"--eval-classifier {spec} returned {type(module).__name__}, not a module x -> logits")
    h = hashlib.sha256(spec.encode())
    if isinstance(module, torch.nn.Module):
        module = module.eval()
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return module, f"{spec}@{h.hexdigest()[:16]}"


def user_logits(spec: str, images: torch.Tensor) -> torch.Tensor:
    """Logits [B, K] of uint8 images [B, C, H, W] under the user's clean classifier (float32 input in [-1, 1])."""
    module, _ = user_classifier(spec)
    with torch.no_grad():
        out = module(images.to(torch.float32) / 127.5 - 1.0)
    if isinstance(out, tuple | list):
        out = out[-1]
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != images.shape[0]:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"--eval-classifier {spec} returned {got}, expected logits [{images.shape[0]}, classes]")
    return out.detach().cpu()


def _new_rows(ctx: Any) -> Any:
    """The accumulator: rows (log p(c | x), hit) per sample, tagged with the clean classifier that makes them
    (None: the built-in one)."""
    from diffbench.metrics.accumulators import RowsAcc

    acc = RowsAcc(np.dtype(np.float64))
    acc.classifier = (ctx.options or {}).get(EVAL_CLASSIFIER)  # type: ignore[attr-defined]
    return acc


def _consume(acc: Any, batch: Any) -> None:
    """One row per sample: (log p(c | x), 1 if the classifier's top class is c else 0)."""
    from diffbench.io import quantize

    if batch.labels is None:
        raise ConfigError("class-accuracy and inv-prob need the intended class of each sample; these have none")
    x = batch.uint8 if batch.uint8 is not None else quantize(batch.images.detach().cpu())
    spec = getattr(acc, "classifier", None)
    logits = classifier_logits(x.cpu()) if spec is None else user_logits(spec, x.cpu())
    labels = batch.labels.cpu()
    logp = intended_log_probs(logits, labels)
    hit = (logits.argmax(dim=1) == labels).to(torch.float64)
    acc.add(torch.stack([logp, hit], dim=1))


def _rows(states: Sequence[Any]) -> np.ndarray:
    from diffbench.metrics.accumulators import merge_rows

    return merge_rows(list(states))


def _accuracy(states: Sequence[Any], ctx: Any) -> tuple[float, dict[str, Any]]:
    """Share of samples the clean classifier assigns to their intended class."""
    rows = _rows(states)
    return float(rows[:, 1].mean()), {"classifier": _classifier_id(ctx)}


def _inverse_prob(states: Sequence[Any], ctx: Any) -> tuple[float, dict[str, Any]]:
    """Mean of 1/p(c | x) (Li & Jiao 2025's measure of guidance), its 50/90/99th percentiles, no clipping."""
    logp = _rows(states)[:, 0]
    inv = np.exp(-logp)  # 1/p from log p in float64: finite unless p < 1e-308
    extras: dict[str, Any] = {f"q{q}": float(np.percentile(inv, q)) for q in QUANTILES}
    extras["clipping"] = "none"
    extras["classifier"] = _classifier_id(ctx)
    extras[PER_SEED] = encode_per_seed(logp)
    return float(inv.mean()), extras


PER_SEED = "logp_per_seed"  # inv-prob's extra: log p(c | x) of every sample, in seed order, float32 base64


def encode_per_seed(logp: np.ndarray) -> str:
    """log p(c | x) per sample [N] as little-endian float32, base64 (4 bytes a seed: small enough to store with
    every cell, precise enough to tell which seeds' p rose or fell between two guidance weights)."""
    import base64

    return base64.b64encode(np.asarray(logp, dtype="<f4").tobytes()).decode("ascii")


def decode_per_seed(text: str) -> np.ndarray:
    """The inverse of encode_per_seed: float32 [N]."""
    import base64

    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def _classifier_id(ctx: Any = None) -> str:
    spec = None if ctx is None else (ctx.options or {}).get(EVAL_CLASSIFIER)
    if spec is not None:
        return user_classifier(spec)[1]
    from diffbench.metrics.classifier import digits_classifier

    return digits_classifier("cpu").id + "/float64"


EVAL_CLASSIFIER = "eval_classifier"  # the metric option naming a user's clean classifier (entry point)


def _options(ctx: Any) -> dict[str, Any]:
    """The cell identity's part of these metrics: the user's classifier (entry point and parameter hash) when
    one is given; nothing for the built-in one (its weights are pinned with the package)."""
    spec = (ctx.options or {}).get(EVAL_CLASSIFIER)
    return {} if spec is None else {EVAL_CLASSIFIER: _classifier_id(ctx)}


def _check(ctx: Any) -> None:
    """Refuse before sampling: the samples need intended classes and must be digits the classifier reads."""
    from diffbench.denoiser import sample_shape
    from diffbench.metrics.classifier import NUM_CLASSES, RESOLUTION

    model = ctx.model
    if model is None:
        return
    label_dim = int(getattr(model, "label_dim", 0) or 0)
    fixed: int | None = getattr(ctx, "class_label", None)  # --class: on an unconditional model, the classifier's
    if not label_dim and fixed is None:
        raise ConfigError(
            "class-accuracy and inv-prob need each sample's intended class: the model is unconditional "
            "(give --class C, e.g. with classifier guidance, or use a class-conditional model such as digits-edm-cond)"
        )
    shape = tuple(sample_shape(model))
    spec = (ctx.options or {}).get(EVAL_CLASSIFIER)
    if spec is not None:  # a user's classifier: one trial call on a mid-grey sample of the model's shape
        logits = user_logits_checked(spec, shape)
        if label_dim and logits.shape[1] != label_dim:
            raise ConfigError(f"--eval-classifier {spec} gives {logits.shape[1]} classes, the model has {label_dim}")
        if fixed is not None and not label_dim and not 0 <= fixed < logits.shape[1]:
            raise ConfigError(f"--class {fixed} is not a class of --eval-classifier {spec} ({logits.shape[1]} classes)")
        return
    if fixed is not None and not label_dim and not 0 <= fixed < NUM_CLASSES:
        raise ConfigError(f"--class {fixed} is not a class of the digits classifier (0..{NUM_CLASSES - 1})")
    if (label_dim or NUM_CLASSES) != NUM_CLASSES or shape[1:] != (RESOLUTION, RESOLUTION) or shape[0] not in (1, 3):
        raise ConfigError(
            f"class-accuracy and inv-prob use the built-in digits classifier (10 classes of 8x8 images); "
            f"the model makes {label_dim} classes of shape {list(shape)}"
        )


def user_logits_checked(spec: str, shape: tuple[int, ...]) -> torch.Tensor:
    """user_logits on one mid-grey uint8 sample of `shape`, any failure of the user's module as one line."""
    try:
        return user_logits(spec, torch.full((1, *shape), 128, dtype=torch.uint8))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"--eval-classifier {spec} fails on samples of shape {list(shape)}: {type(exc).__name__}: {str(exc)[:160]}"
        ) from None


def _register() -> None:
    from diffbench.metrics.registry import Metric, State, register_metric

    state = State("intended_class", _new_rows, _consume)
    register_metric(
        Metric(
            "class-accuracy",
            "higher",
            ("samples",),
            "Accuracy of the digits classifier on each sample's intended class (conditional digits models)",
            state,
            _accuracy,
            options=_options,
            check=_check,
        )
    )
    register_metric(
        Metric(
            "inv-prob",
            "lower",
            ("samples",),
            "Mean of 1/p(c|x) of the intended class under the digits classifier, with quantiles 50/90/99",
            state,
            _inverse_prob,
            options=_options,
            check=_check,
        )
    )


_register()
