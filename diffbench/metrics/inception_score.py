"""Inception Score from classifier logits (Salimans et al. 2016, Sec. 4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffbench.errors import ConfigError


def inception_score(*, logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) ‖ p(y))) per split; mean and std over splits (Salimans et al. 2016)."""
    n = logits.shape[0]
    if splits < 1 or n < splits:
        raise ConfigError(f"Inception Score needs at least {splits} samples for {splits} splits, got {n}")
    logp = torch.log_softmax(logits.to(torch.float64), dim=1)
    scores = []
    for part in torch.tensor_split(logp, splits):
        # KL(p(y|x) ‖ p(y)) with p(y) the split's mean of p(y|x)
        log_marginal = torch.logsumexp(part, dim=0) - np.log(part.shape[0])
        kl = (part.exp() * (part - log_marginal[None, :])).sum(dim=1)
        scores.append(float(kl.mean().exp()))
    arr = np.asarray(scores)
    return float(arr.mean()), float(arr.std())


# ---- is as a registered metric (diffbench.metrics.registry) --------------------------------------------


def _is_value(states: Sequence[Any], ctx: Any) -> tuple[float, dict[str, Any]]:
    """IS of the union of the blocks' logits; std over its splits."""
    from diffbench.metrics.accumulators import as_float, merge_rows

    mean, std = inception_score(logits=torch.as_tensor(merge_rows(list(states))))
    return mean, {"std": as_float(std)}


def _register() -> None:
    from diffbench.metrics.registry import LOGITS, Metric, register_metric

    register_metric(
        Metric("is", "higher", ("logits",), "Inception Score (needs an extractor with logits)", LOGITS, _is_value)
    )


_register()
