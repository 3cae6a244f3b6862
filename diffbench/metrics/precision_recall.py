"""Improved precision and recall from k-NN manifolds of features (Kynkäänniemi et al. 2019, Sec. 3)."""

from __future__ import annotations

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
