"""Auxiliary priors: models of the noised data p_sigma = p_data * N(0, sigma^2 I) to start sampling from.

Franzese et al. 2023 ("How Much is Enough? A Study on Diffusion Times in Score-based Generative Models",
arXiv 2206.05173) shorten the diffusion and bridge the gap between the noised data at the end of the short
diffusion and the start distribution with an auxiliary model of p_sigma. Here:

- `GaussianMixturePrior`: K weighted Gaussians N(mu_k, Sigma_k + sigma^2 I) in pixel space (the network's
  [-1, 1] range, flattened to D = C*H*W numbers). K = 1 is the Gaussian prior N(mu, Sigma + sigma^2 I) of the
  data's mean and covariance; K > 1 is fitted by EM (Bishop, PRML Sec. 9.2.2, full covariances: for the 64-d
  digits a full 64x64 covariance per component is cheap and captures the pixel correlations that make a digit;
  at CIFAR-10's 3072 dimensions one full covariance is 75 MB and each EM step a 3072^3 Cholesky per
  component, workable for a few components on a GPU; a diagonal-plus-low-rank form is not implemented). Stored as
  an npz (`save_prior`, `load_prior`) with its sigma, kind, the data's sha256 and the fit settings.
- `IdealPrior`: the data points plus N(0, sigma^2 I) noise, p_sigma of the finite data set itself, at any
  sigma (it copies the data: for analysis only).
- `DataSet` / `load_data`: images from a folder, zip or npz, or the shipped `digits-data`, as float64 [N, D]
  in [-1, 1] (x = u / 127.5 - 1, the inverse of the EDM quantization).

This module imports neither diffbench.sampling nor diffbench.metrics: the sampler draws its start from a prior
here (diffbench.sampling.initial) and the prior-kl metric reads its log-density here.

Draws are per seed and batch-size invariant: x_0 uses the seed's stream's first draw z (the latents, as the
N(0, sigma^2 I) start does: x_0 = mu_k + L_k z); the component k comes from a second generator seeded by a
hash of the seed, so labels and step noise stay those of the Gaussian start of the same seed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffbench.errors import ConfigError

FORMAT = "diffbench-prior/1"
FILE = "file:"
IDEAL = "ideal:"
DIGITS = "digits-data"
DIGITS_SPLITS = ("train", "heldout", "all")
IDEAL_NOTE = "ideal prior: starts from the data points plus noise, i.e. it copies the data (analysis only)"
LOG_2PI = math.log(2 * math.pi)


# ---- data --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSet:
    """Images as float64 [N, D] in [-1, 1] (D = C*H*W), their shape (C, H, W), a label and a content sha256.

    sha256: of the images as uint8 NCHW (their bytes and shape), so one set of images has one hash whichever
    file it came from."""

    x: torch.Tensor
    shape: tuple[int, int, int]
    label: str
    sha256: str

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])


def _from_uint8(u8: np.ndarray, label: str) -> DataSet:
    u8 = np.ascontiguousarray(u8, dtype=np.uint8)
    h = hashlib.sha256(repr(tuple(u8.shape)).encode())
    h.update(u8.tobytes())
    x = torch.from_numpy(u8.reshape(u8.shape[0], -1).astype(np.float64) / 127.5 - 1.0)  # inverse of EDM's quantize
    return DataSet(x=x, shape=(int(u8.shape[1]), int(u8.shape[2]), int(u8.shape[3])), label=label, sha256=h.hexdigest())


DIGITS_SPELLINGS = (DIGITS, "digits")  # both spellings name the shipped digits (commands used to differ)
BUILTIN_DATA_NOTE = "built-in data: digits-data[:train|heldout|all] (also spelled digits[:train|heldout|all])"


def builtin_split(spec: str, *, default: str = "train") -> str | None:
    """The split of the shipped digits that `spec` names, or None when it names no built-in data.

    `digits-data` and `digits` are one name; a bare name means `default` (train for the data a model was trained
    on: fit-prior, --kl-data, ideal:; heldout for score-error). Built-in names win over a file or folder of the
    same name (write ./digits for a folder). Raises UnknownNameError for an unknown split."""
    for name in DIGITS_SPELLINGS:
        if spec == name:
            return default
        if spec.startswith(name + ":"):
            split = spec[len(name) + 1 :]
            if split not in DIGITS_SPLITS:
                from diffbench.errors import UnknownNameError

                raise UnknownNameError("digits split", split, DIGITS_SPLITS)
            return split
    return None


def open_data_source(spec: str | os.PathLike) -> Any:
    """The ImageSource of a folder, zip or npz; a missing one raises ConfigError naming the built-in data."""
    from diffbench.metrics.sources import open_source

    if not Path(spec).exists():
        raise ConfigError(f"{os.fspath(spec)}: no such file or folder ({BUILTIN_DATA_NOTE})")
    return open_source(spec)


@functools.lru_cache(maxsize=8)
def _load_data_cached(spec: str, mtime: float) -> DataSet:
    split = builtin_split(spec)
    if split is not None:
        from diffbench.models.builtin import digits_data

        images, _ = digits_data().split(split)
        return _from_uint8(images, f"{DIGITS}:{split}")
    from diffbench.metrics.sources import iter_uint8

    src = open_data_source(spec)
    parts = [b.numpy() for b in iter_uint8(src, batch=1000)]
    return _from_uint8(np.concatenate(parts), spec)


def load_data(spec: str | os.PathLike) -> DataSet:
    """The images of `spec`: `digits-data` or `digits` (the digits models' training split, 1,500 images;
    `:heldout` or `:all` for the others, see `builtin_split`) or a folder, zip or npz of images.
    Raises ConfigError for a bad source."""
    text = os.fspath(spec)
    p = Path(text)
    mtime = p.stat().st_mtime if p.exists() else 0.0
    return _load_data_cached(text, mtime)


# ---- the densities -----------------------------------------------------------------------------------------


def noised_data_log_density(x: torch.Tensor, data: torch.Tensor, sigma: float, *, chunk: int = 4096) -> torch.Tensor:
    """log p_sigma(x) [B] of p_sigma = (1/N) sum_i N(x_i, sigma^2 I): the exact noised empirical distribution.

    x [B, D], data [N, D] (float64). log-sum-exp over the N data points (Gaussian log-density:
    -|x - x_i|^2 / (2 sigma^2) - D/2 log(2 pi sigma^2)), the data chunked so memory stays O(B * chunk).
    """
    x = x.to(torch.float64)
    data = data.to(x.device, torch.float64)
    d = x.shape[1]
    xx = (x * x).sum(1, keepdim=True)
    parts = []
    for s in range(0, data.shape[0], chunk):
        y = data[s : s + chunk]
        sq = (xx - 2 * x @ y.T + (y * y).sum(1)[None, :]).clamp_min(0.0)  # |x - x_i|^2
        parts.append(-sq / (2 * sigma**2))
    logits = torch.cat(parts, dim=1)
    return torch.logsumexp(logits, dim=1) - math.log(data.shape[0]) - 0.5 * d * (LOG_2PI + 2 * math.log(sigma))


def _side_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator for the prior's discrete choice of one seed, apart from the seed's own stream."""
    h = hashlib.sha256(f"diffbench-prior-component:{int(seed)}".encode()).digest()
    return torch.Generator(device).manual_seed(int.from_bytes(h[:8], "little") & 0x7FFFFFFFFFFFFFFF)


def _check_draw(prior: Any, sigma: float, shape: Sequence[int]) -> None:
    if prior.sigma is not None and not math.isclose(float(sigma), prior.sigma, rel_tol=1e-9, abs_tol=0.0):
        raise ConfigError(f"{prior.label} is a prior at sigma {prior.sigma:g}, asked to start at sigma {sigma:g}")
    if tuple(int(s) for s in shape) != tuple(prior.shape):
        raise ConfigError(f"{prior.label} is a prior of images {list(prior.shape)}, the model makes {list(shape)}")


@dataclass
class GaussianMixturePrior:
    """sum_k w_k N(mu_k, Sigma_k + sigma^2 I) over D = C*H*W pixel values: the data's K-component fit, noised.

    weights [K], means [K, D], covs [K, D, D] (the data part Sigma_k, without sigma^2 I), float64; sigma > 0;
    shape (C, H, W). K = 1 is the Gaussian prior. `meta`: kind, data sha256, fit settings (saved with it).
    """

    weights: torch.Tensor
    means: torch.Tensor
    covs: torch.Tensor
    sigma: float
    shape: tuple[int, int, int]
    meta: dict[str, Any] = field(default_factory=dict)
    label: str = "prior"
    sha256: str | None = None
    _chol: torch.Tensor | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind") or ("gaussian" if self.k == 1 else f"gmm:{self.k}"))

    @property
    def k(self) -> int:
        return int(self.weights.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def chol(self) -> torch.Tensor:
        """Cholesky factors L_k [K, D, D] of Sigma_k + sigma^2 I (lower triangular)."""
        if self._chol is None:
            eye = torch.eye(self.dim, dtype=torch.float64)
            c = self.covs + self.sigma**2 * eye
            L, info = torch.linalg.cholesky_ex(c)
            if int(info.max()) != 0:
                raise ConfigError(f"{self.label}: a component covariance is not positive definite")
            self._chol = L
        return self._chol

    def components(self, seeds: Sequence[int], device: torch.device) -> torch.Tensor:
        """Component index [B] of each seed: inverse CDF of the weights at a uniform of the seed's side generator."""
        if self.k == 1:
            return torch.zeros(len(seeds), dtype=torch.int64)
        cdf = torch.cumsum(self.weights, 0)
        u = torch.stack(
            [torch.rand((), generator=_side_generator(s, device), dtype=torch.float64, device=device) for s in seeds]
        ).cpu()
        return torch.searchsorted(cdf, u * cdf[-1]).clamp_max(self.k - 1)

    def draw(self, noise: Any, sigma: float, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """x_0 = mu_k + L_k z [B, *shape] in `dtype`: z the stream's first draw (the latents), k per seed."""
        _check_draw(self, sigma, shape)
        z = noise.latents(shape).to(torch.float64).flatten(1)  # the same z as the N(0, sigma^2 I) start
        k = self.components(noise.seeds, noise.device)
        L, mu = self.chol().to(z.device), self.means.to(z.device)
        k = k.to(z.device)
        # one matrix-vector product per seed: the same arithmetic whatever the batch, memory O(D^2)
        x = torch.stack([mu[j] + L[j] @ z[i] for i, j in enumerate(k.tolist())])
        return x.reshape(len(noise.seeds), *shape).to(dtype)

    def log_prob(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        """log q(x) [B] of flattened x [B, D] (float64), by log-sum-exp over the components."""
        if sigma is not None and not math.isclose(float(sigma), self.sigma, rel_tol=1e-9):
            raise ConfigError(f"{self.label} is a prior at sigma {self.sigma:g}, not {sigma:g}")
        x = x.to(torch.float64)
        L = self.chol().to(x.device)
        out = []
        for j in range(self.k):
            r = (x - self.means[j].to(x.device)).T  # [D, B]
            y = torch.linalg.solve_triangular(L[j], r, upper=False)  # L^-1 (x - mu)
            logdet = 2 * torch.log(torch.diagonal(L[j])).sum()
            out.append(-0.5 * (y * y).sum(0) - 0.5 * logdet - 0.5 * self.dim * LOG_2PI)
        logw = torch.log(self.weights.to(x.device))[:, None]
        return torch.logsumexp(torch.stack(out) + logw, dim=0)

    def describe(self) -> dict[str, Any]:
        """What a record says about the prior: kind, sigma, file sha256, data sha256, fit settings."""
        return {
            "kind": self.kind,
            "sigma": self.sigma,
            "sha256": self.sha256,
            "data_sha256": self.meta.get("data_sha256"),
            "fit": self.meta.get("fit"),
        }


@dataclass
class IdealPrior:
    """The finite data set noised: (1/N) sum_i N(x_i, sigma^2 I) at whatever sigma the plan starts at.

    x_0 = x_k + sigma z with k uniform per seed (side generator) and z the stream's first draw. It copies the
    data (its samples are the data points plus noise): for analysis of the prior's effect only."""

    data: DataSet
    sigma: float | None = None
    kind: str = "ideal"

    @property
    def label(self) -> str:
        return f"ideal:{self.data.label}"

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data.shape

    @property
    def sha256(self) -> str:
        return self.data.sha256

    def draw(self, noise: Any, sigma: float, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        _check_draw(self, sigma, shape)
        z = noise.latents(shape).to(torch.float64).flatten(1)
        k = torch.stack(
            [
                torch.randint(self.data.n, (), generator=_side_generator(s, noise.device), device=noise.device)
                for s in noise.seeds
            ]
        ).cpu()
        x = self.data.x[k].to(z.device) + sigma * z
        return x.reshape(len(noise.seeds), *shape).to(dtype)

    def log_prob(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        assert sigma is not None, "the ideal prior's density needs the sigma it starts at"
        return noised_data_log_density(x, self.data.x, float(sigma))

    def describe(self) -> dict[str, Any]:
        return {"kind": "ideal", "data": self.data.label, "data_sha256": self.data.sha256, "note": IDEAL_NOTE}


Prior = GaussianMixturePrior | IdealPrior


# ---- files -------------------------------------------------------------------------------------------------


def save_prior(prior: GaussianMixturePrior, path: str | os.PathLike) -> str:
    """Write the prior as an npz (atomically); returns the file's sha256."""
    from diffbench.metrics.sources import file_sha256

    p = Path(path)
    tmp = p.with_name(p.name + ".tmp.npz")
    _savez_fixed(
        tmp,
        format=np.asarray(FORMAT),
        kind=np.asarray(prior.kind),
        sigma=np.asarray(float(prior.sigma)),
        shape=np.asarray(prior.shape, dtype=np.int64),
        weights=prior.weights.numpy(),
        means=prior.means.numpy(),
        covs=prior.covs.numpy(),
        data_sha256=np.asarray(str(prior.meta.get("data_sha256", ""))),
        data=np.asarray(str(prior.meta.get("data", ""))),
        fit=np.asarray(json.dumps(prior.meta.get("fit", {}), sort_keys=True)),
    )
    os.replace(tmp, p)
    return file_sha256(p)


def _savez_fixed(path: Path, **arrays: np.ndarray) -> None:
    """np.savez's layout (one .npy member per array, stored uncompressed) with a fixed member date, so one prior
    is one file, byte for byte, and one sha256 (np.savez stamps the current time into the zip)."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def load_prior(path: str | os.PathLike) -> GaussianMixturePrior:
    """Read a prior written by save_prior (`diffbench fit-prior`). A missing file, another format, or arrays of
    inconsistent shapes, a sigma that is not a finite number > 0, weights that are not a distribution or a
    covariance that is not positive semi-definite: one ConfigError line naming the file."""
    from diffbench.metrics.sources import file_sha256

    p = Path(path)
    what = f"prior file {p}"
    if not p.is_file():
        raise ConfigError(f"{what}: no such file")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # not an npz at all: zip, pickle or header errors
        raise ConfigError(
            f"{what}: not a prior npz ({type(exc).__name__}); write one with `diffbench fit-prior`"
        ) from None
    if str(arrays.get("format", "")) != FORMAT:
        raise ConfigError(f"{what}: not a diffbench prior (format '{arrays.get('format', 'none')}', expected {FORMAT})")
    missing = [k for k in ("kind", "sigma", "shape", "weights", "means", "covs") if k not in arrays]
    if missing:
        raise ConfigError(f"{what}: missing {', '.join(missing)}")
    try:
        sigma = float(arrays["sigma"])
        shape = tuple(int(s) for s in np.asarray(arrays["shape"]).reshape(-1))
        w = torch.from_numpy(np.asarray(arrays["weights"], dtype=np.float64)).reshape(-1)
        mu = torch.from_numpy(np.asarray(arrays["means"], dtype=np.float64))
        cov = torch.from_numpy(np.asarray(arrays["covs"], dtype=np.float64))
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: arrays of the wrong type") from None
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"{what}: sigma must be a finite number > 0, got {sigma}")
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"{what}: shape must be (C, H, W), got {list(shape)}")
    k, d = w.numel(), int(np.prod(shape))
    if k < 1 or tuple(mu.shape) != (k, d) or tuple(cov.shape) != (k, d, d):
        raise ConfigError(
            f"{what}: {k} weights, means {list(mu.shape)}, covariances {list(cov.shape)} do not fit "
            f"{k} components of {d} = {'x'.join(map(str, shape))} values"
        )
    if not (torch.isfinite(w).all() and torch.isfinite(mu).all() and torch.isfinite(cov).all()):
        raise ConfigError(f"{what}: non-finite values")
    if (w < 0).any() or not math.isclose(float(w.sum()), 1.0, abs_tol=1e-6):
        raise ConfigError(f"{what}: the weights are not a distribution (>= 0, summing to 1)")
    fit = json.loads(str(arrays["fit"])) if "fit" in arrays else {}
    meta = {
        "kind": str(arrays["kind"]),
        "data_sha256": str(arrays.get("data_sha256", "")),
        "data": str(arrays.get("data", "")),
        "fit": fit,
    }
    prior = GaussianMixturePrior(w, mu, cov, sigma, shape, meta, label=f"prior file {p}", sha256=file_sha256(p))  # type: ignore[arg-type]
    prior.chol()  # refuses a covariance that is not positive definite with sigma^2 I added
    return prior


def resolve_prior(text: str) -> Prior:
    """`file:PRIOR.npz` (a fitted prior at its sigma) or `ideal:SOURCE` (the data plus noise, at the plan's
    sigma); anything else is one ConfigError line."""
    text = str(text)
    if text.startswith(FILE):
        return load_prior(text[len(FILE) :])
    if text.startswith(IDEAL):
        return IdealPrior(load_data(text[len(IDEAL) :]))
    raise ConfigError(f"--prior '{text}': give file:PRIOR.npz (diffbench fit-prior) or ideal:SOURCE")


def check_prior_text(text: str) -> None:
    """The form of a --prior value (file: or ideal: and a non-empty rest), checked before anything is read."""
    for pre in (FILE, IDEAL):
        if str(text).startswith(pre) and len(str(text)) > len(pre):
            return
    raise ConfigError(f"--prior '{text}': give file:PRIOR.npz (diffbench fit-prior) or ideal:SOURCE")


def prior_sha256(text: str) -> str:
    """The sha256 that enters a cell's identity: the prior file's, or the ideal prior's data; 'missing' if absent."""
    from diffbench.metrics.sources import file_sha256

    text = str(text)
    if text.startswith(FILE):
        p = Path(text[len(FILE) :])
        return file_sha256(p) if p.is_file() else "missing"
    try:
        return load_data(text[len(IDEAL) :]).sha256
    except ConfigError:
        return "missing"


# ---- fitting -----------------------------------------------------------------------------------------------


def needed_images(k: int, dim: int) -> int:
    """Images a K-component full-covariance fit needs: K (D + 1), i.e. D + 1 per component on average, so each
    component's D x D covariance can have full rank (below that EM's covariances are singular but for the
    regularisation)."""
    return k * (dim + 1)


def fit_gaussian(data: DataSet, sigma: float, *, reg: float = 0.0) -> GaussianMixturePrior:
    """N(mu, Sigma + sigma^2 I) from the data's mean and covariance (maximum likelihood, 1/N); needs D + 1
    images (ConfigError below that), so that the D x D covariance Sigma can have full rank, as gmm:1 does."""
    _check_sigma(sigma)
    # sigma^2 I keeps N(mu, Sigma + sigma^2 I) proper for a covariance of any rank, but from N <= D images Sigma
    # has rank < D: the prior would have no data spread in the other directions. The same minimum as gmm:1.
    _check_enough(data, 1, "gaussian")
    x = data.x
    mu = x.mean(0)
    r = x - mu
    cov = r.T @ r / x.shape[0] + reg * torch.eye(data.dim, dtype=torch.float64)
    fit = {"method": "moments (maximum likelihood, 1/N)", "n_images": data.n, "reg": reg}
    meta = {"kind": "gaussian", "data_sha256": data.sha256, "data": data.label, "fit": fit}
    return GaussianMixturePrior(torch.ones(1, dtype=torch.float64), mu[None], cov[None], float(sigma), data.shape, meta)


def fit_gmm(
    data: DataSet,
    sigma: float,
    k: int,
    *,
    reg: float = 1e-4,
    max_iter: int = 200,
    tol: float = 1e-6,
    seed: int = 0,
) -> GaussianMixturePrior:
    """A K-component Gaussian mixture with full covariances fitted by EM to the clean data (Bishop, PRML Sec.
    9.2.2, Eqs. 9.23-9.26), then sigma^2 I added to every covariance (the noised mixture is the mixture of the
    noised components).

    Initialisation: k-means++ (Arthur & Vassilvitskii 2007) from a generator seeded by `seed`, ten Lloyd
    iterations, then EM until the mean log-likelihood per image improves by less than `tol` or `max_iter`.
    `reg` (variance units of the [-1, 1] range) is added to each covariance's diagonal in every M step, so a
    component on constant pixels (the digits' always-blank border) stays non-singular.
    Raises ConfigError when the data hold fewer than K (D + 1) images.
    """
    _check_sigma(sigma)
    if k < 1:
        raise ConfigError(f"a mixture needs K >= 1 components, got {k}")
    _check_enough(data, k, f"gmm:{k}")
    x = data.x
    n, d = x.shape
    g = torch.Generator().manual_seed(int(seed))
    means = _kmeans_pp(x, k, g)
    for _ in range(10):  # Lloyd's k-means iterations
        lab = torch.cdist(x, means).argmin(1)
        for j in range(k):
            if (lab == j).any():
                means[j] = x[lab == j].mean(0)
    lab = torch.cdist(x, means).argmin(1)
    resp = torch.nn.functional.one_hot(lab, k).to(torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    prev, ll, iterations, converged = -math.inf, -math.inf, 0, False
    weights = covs = None
    for it in range(1, max_iter + 1):
        iterations = it
        # M step (PRML Eqs. 9.24-9.26)
        nk = resp.sum(0) + 1e-12
        weights = nk / n
        means = resp.T @ x / nk[:, None]
        covs = torch.empty(k, d, d, dtype=torch.float64)
        for j in range(k):
            r = x - means[j]
            covs[j] = (resp[:, j, None] * r).T @ r / nk[j] + reg * eye
        # E step (PRML Eq. 9.23): responsibilities under the current parameters, and the log-likelihood
        L = torch.linalg.cholesky(covs)
        logp = torch.empty(n, k, dtype=torch.float64)
        for j in range(k):
            y = torch.linalg.solve_triangular(L[j], (x - means[j]).T, upper=False)
            logdet = 2 * torch.log(torch.diagonal(L[j])).sum()
            logp[:, j] = torch.log(weights[j]) - 0.5 * (y * y).sum(0) - 0.5 * logdet - 0.5 * d * LOG_2PI
        tot = torch.logsumexp(logp, 1)
        resp = torch.exp(logp - tot[:, None])
        ll = float(tot.mean())
        if ll - prev < tol:
            converged = True
            break
        prev = ll
    assert weights is not None and covs is not None
    fit = {
        "method": "EM, full covariances (PRML 9.2.2), k-means++ init",
        "k": k,
        "n_images": n,
        "reg": reg,
        "seed": seed,
        "iterations": iterations,
        "max_iter": max_iter,
        "tol": tol,
        "converged": converged,
        "mean_log_likelihood": ll,
    }
    meta = {"kind": f"gmm:{k}", "data_sha256": data.sha256, "data": data.label, "fit": fit}
    return GaussianMixturePrior(weights / weights.sum(), means, covs, float(sigma), data.shape, meta)


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to D(x)^2."""
    n = x.shape[0]
    centres = [x[int(torch.randint(n, (), generator=g))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / n)
        i = int(torch.multinomial(p, 1, generator=g))
        centres.append(x[i])
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return torch.stack(centres).clone()


def _check_sigma(sigma: float) -> None:
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"--sigma must be a finite number > 0, got {sigma}")


def _check_enough(data: DataSet, k: int, kind: str) -> None:
    need = needed_images(k, data.dim)
    if data.n < need and kind == "gaussian":
        raise ConfigError(
            f"{data.label} has {data.n} images; a gaussian prior's full {data.dim}x{data.dim} covariance needs at "
            f"least {need} (D + 1 = {data.dim + 1}), like gmm:1"
        )
    if data.n < need:
        raise ConfigError(
            f"{data.label} has {data.n} images; {kind} with full {data.dim}x{data.dim} covariances needs at least "
            f"{need} (K x (D + 1) = {k} x {data.dim + 1})"
        )


def parse_kind(kind: str) -> int:
    """Components of a --kind: gaussian -> 1, gmm:K -> K (K >= 1); anything else one ConfigError line."""
    if kind == "gaussian":
        return 1
    if kind.startswith("gmm:"):
        try:
            k = int(kind[4:])
        except ValueError:
            k = 0
        if k >= 1:
            return k
    raise ConfigError(f"--kind '{kind}': give gaussian or gmm:K with K >= 1 components")


def fit_prior(
    data: DataSet, *, sigma: float, kind: str, reg: float | None = None, seed: int = 0, max_iter: int = 200
) -> GaussianMixturePrior:
    """fit_gaussian for kind 'gaussian', fit_gmm for 'gmm:K'."""
    k = parse_kind(kind)
    if kind == "gaussian":
        return fit_gaussian(data, sigma, reg=0.0 if reg is None else reg)
    return fit_gmm(data, sigma, k, reg=1e-4 if reg is None else reg, seed=seed, max_iter=max_iter)
