"""Metrics of guided sampling from a clean classifier's p(c | x) of each sample's intended class c: accuracy,
and E[1/p(c | x)], the quantity guidance provably lowers (Li & Jiao 2025, arXiv 2505.01382), with quantiles.

The classifier is the built-in `digits` CNN (metrics/classifier.py, its weights in float64) on the samples
quantized to uint8 once,
as every metric sees them; so these metrics apply to the built-in 8x8 digits models, conditional ones (each
sample's class is the label it was drawn or asked for).
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


def _consume(acc: Any, batch: Any) -> None:
    """One row per sample: (log p(c | x), 1 if the classifier's top class is c else 0)."""
    from diffbench.io import quantize

    if batch.labels is None:
        raise ConfigError("class-accuracy and inv-prob need the intended class of each sample; these have none")
    x = batch.uint8 if batch.uint8 is not None else quantize(batch.images.detach().cpu())
    logits = classifier_logits(x.cpu())
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
    return float(rows[:, 1].mean()), {"classifier": _classifier_id()}


def _inverse_prob(states: Sequence[Any], ctx: Any) -> tuple[float, dict[str, Any]]:
    """Mean of 1/p(c | x) (Li & Jiao 2025's measure of guidance), its 50/90/99th percentiles, no clipping."""
    inv = np.exp(-_rows(states)[:, 0])  # 1/p from log p in float64: finite unless p < 1e-308
    extras: dict[str, Any] = {f"q{q}": float(np.percentile(inv, q)) for q in QUANTILES}
    extras["clipping"] = "none"
    extras["classifier"] = _classifier_id()
    return float(inv.mean()), extras


def _classifier_id() -> str:
    from diffbench.metrics.classifier import digits_classifier

    return digits_classifier("cpu").id + "/float64"


def _check(ctx: Any) -> None:
    """Refuse before sampling: the samples need intended classes and must be digits the classifier reads."""
    from diffbench.denoiser import sample_shape
    from diffbench.metrics.classifier import NUM_CLASSES, RESOLUTION

    model = ctx.model
    if model is None:
        return
    label_dim = int(getattr(model, "label_dim", 0) or 0)
    if not label_dim:
        raise ConfigError(
            "class-accuracy and inv-prob need each sample's intended class: the model is unconditional "
            "(use a class-conditional model such as digits-edm-cond)"
        )
    shape = tuple(sample_shape(model))
    if label_dim != NUM_CLASSES or shape[1:] != (RESOLUTION, RESOLUTION) or shape[0] not in (1, 3):
        raise ConfigError(
            f"class-accuracy and inv-prob use the built-in digits classifier (10 classes of 8x8 images); "
            f"the model makes {label_dim} classes of shape {list(shape)}"
        )


def _register() -> None:
    from diffbench.metrics.accumulators import RowsAcc
    from diffbench.metrics.registry import Metric, State, register_metric

    state = State("intended_class", lambda ctx: RowsAcc(np.dtype(np.float64)), _consume)
    register_metric(
        Metric(
            "class-accuracy",
            "higher",
            ("samples",),
            "Accuracy of the digits classifier on each sample's intended class (conditional digits models)",
            state,
            _accuracy,
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
            check=_check,
        )
    )


_register()
