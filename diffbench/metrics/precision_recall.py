"""Improved precision and recall from k-NN manifolds of features (Kynkäänniemi et al. 2019, Sec. 3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from diffbench.errors import ConfigError


def knn_radii(features: torch.Tensor, *, k: int, chunk: int = 512) -> torch.Tensor:
    """Distance from each feature vector to its k-th nearest other vector in the same set."""
    n = features.shape[0]
    if n <= k:
        raise ConfigError(f"precision/recall with k={k} needs more than {k} samples per side, got {n}")
    out = []
    for i in range(0, n, chunk):
        d = torch.cdist(features[i : i + chunk], features)
        # the k+1 smallest include the point itself at distance 0
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def manifold_coverage(*, manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor, chunk: int = 512) -> float:
    """Fraction of queries inside some ball B(manifold_i, radii_i) (Kynkäänniemi et al. 2019, Eq. 1-2)."""
    inside = []
    for i in range(0, queries.shape[0], chunk):
        d = torch.cdist(queries[i : i + chunk], manifold)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).to(torch.float64).mean())


def precision_recall(*, real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """(precision, recall): fakes in the real manifold, reals in the fake one (Kynkäänniemi et al. 2019)."""
    if real.shape[1:] != fake.shape[1:]:
        raise ConfigError(f"precision/recall: feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}")
    real, fake = real.to(torch.float64), fake.to(torch.float64).to(real.device)
    precision = manifold_coverage(manifold=real, radii=knn_radii(real, k=k), queries=fake)
    recall = manifold_coverage(manifold=fake, radii=knn_radii(fake, k=k), queries=real)
    return precision, recall


# ---- precision and recall as registered metrics (diffbench.metrics.registry) ----------------------------


def _pr_of(states: Sequence[Any], ctx: Any) -> tuple[float, float]:
    """(precision, recall) of the union of the blocks' feature rows, computed once for both metrics."""
    from diffbench.metrics.accumulators import merge_rows

    key = ("precision-recall", tuple(id(s) for s in states))
    if key not in ctx.memo:
        assert ctx.ref is not None and ctx.ref.features is not None
        fake = torch.as_tensor(merge_rows(list(states)))
        ctx.memo[key] = precision_recall(real=torch.as_tensor(ctx.ref.features), fake=fake, k=ctx.options["pr_k"])
    return ctx.memo[key]


def _pr_value(i: int) -> Callable[[Sequence[Any], Any], tuple[float, dict[str, Any]]]:
    """The value function of precision (i = 0) or recall (i = 1)."""

    def value(states: Sequence[Any], ctx: Any) -> tuple[float, dict[str, Any]]:
        return _pr_of(states, ctx)[i], {}

    return value


def _register() -> None:
    from diffbench.metrics.registry import FEATURE_ROWS, Metric, register_metric

    def options(ctx: Any) -> dict[str, Any]:
        return {"pr_k": ctx.options["pr_k"]}

    for i, (name, what) in enumerate((("precision", "precision"), ("recall", "recall"))):
        register_metric(
            Metric(
                name,
                "higher",
                ("features", "ref-features"),
                f"k-NN {what} (needs reference features)",
                FEATURE_ROWS,
                _pr_value(i),
                options=options,
            )
        )


_register()
