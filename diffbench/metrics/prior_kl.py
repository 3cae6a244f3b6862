"""prior-kl: how far the distribution a sampler starts from is from the noised data at its starting sigma.

KL(p_sigma || q), in nats over all D = C*H*W dimensions, between the true noised data p_sigma = p_data *
N(0, sigma^2 I) at the cell's first sigma and the cell's start q (N(0, sigma^2 I), or the auxiliary prior
of --prior). This direction is the prior term of the ELBO gap (Franzese et al. 2023, arXiv 2206.05173, the
KL(p_T || q) term of their bound; Ho et al. 2020's L_T = KL(q(x_T | x_0) || p(x_T))): it asks how likely
the start makes what the reverse process should start from, and it needs samples only of p_sigma, which are
exact (a data point plus noise).

(b) Monte Carlo, per seed: x = x_i + sigma eps with i uniform over the N data points and eps ~ N(0, I) from a
generator of its own seeded by the seed (so every cell of a sweep at one sigma uses the same draws: paired),
and the summand log p_sigma(x) - log q(x), where log p_sigma is exact for the data set as a mixture of N
Gaussians (log-sum-exp over the data points; diffbench.priors.noised_data_log_density) and log q is the
start's log-density. For a Gaussian start the q part is integrated exactly (Rao-Blackwellisation, see
log_ratios): KL(p_sigma || q) = E_i KL(N(x_i, sigma^2 I) || q) - I(x_0; x), so each summand is the closed-form
KL of its data point minus the estimated mutual information term, unbiased and of small variance where the KL
is small. The value is the mean over the cell's seeds; `se` is its Monte Carlo standard error
(sample standard deviation / sqrt(n)); the interval is the usual jackknife over the seed blocks.

(a) The closed-form upper bound, from convexity of KL in its first argument (Cover & Thomas, Elements of
Information Theory, Thm 2.7.2) applied to p_sigma = E_x0 N(x0, sigma^2 I):
    KL(p_sigma || q) <= E_x0 KL(N(x0, sigma^2 I) || q),
which for the N(0, sigma^2 I) start is E|x0|^2 / (2 sigma^2) (the variances match, only the means differ;
the VE form of Ho et al.'s prior term), from the data's second moment E|x0|^2 summed over the D dimensions;
for a Gaussian prior N(mu, C) it is 1/2 [sigma^2 tr C^-1 + E (x0 - mu)^T C^-1 (x0 - mu) - D + log det C
- D log sigma^2]. A mixture start has no closed form: no bound. Both numbers are totals over D dimensions;
`per_dim` divides the estimate by D.

The data set (`--kl-data`: digits-data, or a folder/zip/npz of images) is read as x = u / 127.5 - 1 from
uint8, the network's [-1, 1] range. The cell's start arrives as ctx.start from the cell runner, so this
module never imports the sampler.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffbench.errors import ConfigError
from diffbench.metrics.accumulators import RowsAcc

DIRECTION = "KL(p_sigma || q): p_sigma the noised data, q the start (the ELBO's prior term)"


def _generator(seed: int) -> torch.Generator:
    h = hashlib.sha256(f"diffbench-prior-kl:{int(seed)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & 0x7FFFFFFFFFFFFFFF)


def _draws(data: torch.Tensor, sigma: float, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x [B, D], i [B], eps [B, D]): one draw x = x_i + sigma eps of p_sigma per seed, fixed by the seed."""
    idx, noise = [], []
    for s in seeds:
        g = _generator(s)
        idx.append(int(torch.randint(data.shape[0], (), generator=g)))
        noise.append(torch.randn(data.shape[1], generator=g, dtype=torch.float64))
    i, eps = torch.tensor(idx, dtype=torch.int64), torch.stack(noise)
    return data[i] + sigma * eps, i, eps


def draws_of_noised_data(data: torch.Tensor, sigma: float, seeds: Sequence[int]) -> torch.Tensor:
    """One draw of p_sigma per seed, x = x_i + sigma eps [B, D] float64 (data [N, D]); fixed by the seed."""
    return _draws(data, sigma, seeds)[0]


def pointwise_kl(a: torch.Tensor, sigma: float, prior: Any) -> torch.Tensor | None:
    """KL(N(a, sigma^2 I) || q) [B] for rows a [B, D] and a Gaussian start q (closed form), else None."""
    kind = prior.describe().get("kind")
    a = a.to(torch.float64)
    d = a.shape[1]
    if kind == "normal":
        return (a * a).sum(1) / (2 * sigma**2)  # equal variances: only the means differ
    if getattr(prior, "k", None) == 1:
        L = prior.chol()[0]
        r = torch.linalg.solve_triangular(L, (a - prior.means[0]).T, upper=False)
        linv = torch.linalg.solve_triangular(L, torch.eye(d, dtype=torch.float64), upper=False)
        tr = float((linv * linv).sum())  # tr C^-1 = |L^-1|_F^2
        logdet = 2 * float(torch.log(torch.diagonal(L)).sum())
        # KL(N(a, s^2 I) || N(mu, C)) = 1/2 [s^2 tr C^-1 + (a - mu)^T C^-1 (a - mu) - D + log det C - D log s^2]
        return 0.5 * (sigma**2 * tr + (r * r).sum(0) - d + logdet - d * math.log(sigma**2))
    return None


def log_ratios(data: torch.Tensor, sigma: float, prior: Any, seeds: Sequence[int]) -> torch.Tensor:
    """The Monte Carlo summands [B] of KL(p_sigma || q) at the seeds' draws x = x_i + sigma eps of p_sigma.

    Any start: log p_sigma(x) - log q(x). A Gaussian start (N(0, sigma^2 I), a Gaussian prior): the same
    quantity with its q part integrated exactly, KL(N(x_i, sigma^2 I) || q) - [log N(x; x_i, sigma^2 I) -
    log p_sigma(x)] (KL(p_sigma || q) = E_i KL(N(x_i, sigma^2 I) || q) - I(x_0; x), the mutual information
    estimated at the same draws): unbiased too, and of far smaller variance where the KL is small (large sigma).
    """
    from diffbench.priors import LOG_2PI, noised_data_log_density

    x, i, eps = _draws(data, sigma, seeds)
    log_p = noised_data_log_density(x, data, sigma)
    exact = pointwise_kl(data[i], sigma, prior)
    if exact is None:
        return log_p - prior.log_prob(x, sigma).to(torch.float64).cpu()
    d = data.shape[1]
    log_kernel = -0.5 * (eps * eps).sum(1) - 0.5 * d * (LOG_2PI + 2 * math.log(sigma))  # log N(x; x_i, s^2 I)
    return exact - (log_kernel - log_p)


def upper_bound(data: torch.Tensor, sigma: float, prior: Any) -> float | None:
    """E_x0 KL(N(x0, sigma^2 I) || q) >= KL(p_sigma || q) for a Gaussian start q, else None (see the module)."""
    kl = pointwise_kl(data, sigma, prior)
    return None if kl is None else float(kl.mean())


class _KLAcc(RowsAcc):
    """The Monte Carlo summands of this block's seeds (one float64 row each)."""

    def __init__(self, ctx: Any):
        super().__init__(np.dtype(np.float64))
        self.ctx = ctx


def _data(ctx: Any) -> Any:
    from diffbench.priors import load_data

    spec = ctx.options.get("kl_data")
    if not spec:
        raise ConfigError(
            "prior-kl needs the data set the model was trained on: give --kl-data (images or digits-data)"
        )
    return load_data(spec)


def _start(ctx: Any) -> tuple[float, Any]:
    start = ctx.start
    if not start:
        raise ConfigError(
            "prior-kl needs the cell's starting distribution: it applies to samplers (fid --model, sweep)"
        )
    return float(start["sigma"]), start["prior"]


def _consume(acc: _KLAcc, batch: Any) -> None:
    sigma, prior = _start(acc.ctx)
    acc.add(log_ratios(_data(acc.ctx).x, sigma, prior, batch.seeds)[:, None])


def _value(states: Sequence[Any], ctx: Any) -> tuple[float, dict[str, Any]]:
    from diffbench.metrics.accumulators import merge_rows

    v = merge_rows(list(states))[:, 0]
    sigma, prior = _start(ctx)
    data = _data(ctx)
    memo = ("prior-kl bound", sigma, id(prior))
    if memo not in ctx.memo:
        ctx.memo[memo] = upper_bound(data.x, sigma, prior)
    bound = ctx.memo[memo]
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
    extras = {
        "mc_se": se,
        "per_dim": float(v.mean()) / data.dim,
        "bound": bound,
        "sigma": sigma,
        "start": prior.describe().get("kind"),
        "direction": DIRECTION,
        "data": data.label,
        "data_n": data.n,
        "dim": data.dim,
    }
    return float(v.mean()), extras


def _check(ctx: Any) -> None:
    """Refuse before sampling: the data must load and be images of the model's shape."""
    from diffbench.denoiser import sample_shape

    data = _data(ctx)
    if ctx.model is not None and tuple(sample_shape(ctx.model)) != tuple(data.shape):
        raise ConfigError(
            f"prior-kl: the data {data.label} are images {list(data.shape)}, the model makes "
            f"{list(sample_shape(ctx.model))}"
        )


def _register() -> None:
    from diffbench.metrics.registry import Metric, State, register_metric

    register_metric(
        Metric(
            "prior-kl",
            "lower",
            ("start",),
            "KL(p_sigma || start) at the starting sigma, nats (Monte Carlo over the seeds; closed-form bound)",
            State("prior_kl", _KLAcc, _consume),
            _value,
            options=lambda ctx: {"kl_data": ctx.options.get("kl_data")},
            check=_check,
        )
    )


_register()
