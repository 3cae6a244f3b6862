"""Built-in analytic models with exact denoisers: Gaussian mixtures and the ideal denoiser of a finite dataset.

They give exact ground truth for solver tests: D(x; sigma) = E[y | y + sigma n = x] in closed form
(Karras et al. 2022, Eq. 2-3), and a reference ODE solution by scipy's adaptive solver at tight tolerance.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffbench.errors import ConfigError, UnknownNameError


def _one_hot_mask(class_labels: torch.Tensor | None, k: int, batch: int, device) -> torch.Tensor | None:
    """Log-mask that keeps only the labelled component(s): 0 where allowed, -inf elsewhere."""
    if class_labels is None:
        return None
    labels = class_labels.to(device, torch.float64).reshape(batch, k)
    return torch.where(labels > 0, 0.0, -math.inf)


# Elements of the largest temporary a batched denoiser builds at once (32 MiB in float64).
_CHUNK_ELEMENTS = 1 << 22


def _rows(per_row: int) -> int:
    """How many samples fit in one chunk when each needs `per_row` elements of scratch."""
    return max(1, _CHUNK_ELEMENTS // max(1, per_row))


def exact_slices(a: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Split float64 a [..., n, m] along its summed axis -2 into slices a = s_1 + s_2 + ... + rest.

    Error-free splitting (Ozaki et al. 2012, "Error-free transformations of matrix multiplication",
    Alg. 3): each column's slice holds at most 53 - beta bits on a power-of-two grid set by that
    column's largest entry, so any dot product of n terms between two such slices is exact in float64,
    in whatever order or blocking the BLAS adds it up. The slices cover at least 53 bits of every
    column.
    """
    beta = math.ceil((54 + math.log2(max(n, 2))) / 2)  # one bit of margin over Ozaki's bound
    count = math.ceil(53 / (53 - beta))
    out = []
    for _ in range(count):
        mu = a.abs().amax(dim=-2, keepdim=True)
        mant, _ = torch.frexp(mu)  # mu = mant * 2^e, 0.5 <= mant < 1: mu / mant = 2^e exactly
        tau = torch.where(mant > 0, mu / torch.where(mant > 0, mant, 1.0), 1.0) * 2.0**beta
        hi = (a + tau) - tau  # a rounded to the grid 2^(e + beta - 53)
        out.append(hi)
        a = a - hi  # exact
    return out


def exact_matmul(left: torch.Tensor, right: list[torch.Tensor]) -> torch.Tensor:
    """left [..., B, n] @ right [..., n, m] with right given as exact_slices(right, n).

    Every slice-by-slice product is exact, so each output row depends only on its own row of `left`:
    the result is bit-identical whatever the other rows, the batch size, the device or the BLAS. The
    products are added in one fixed order (smallest first); accuracy is that of float64 or better.
    """
    n = left.shape[-1]
    lhs = [s.transpose(-1, -2) for s in exact_slices(left.transpose(-1, -2), n)]
    count = len(lhs)
    # the pairs (i, j) with i + j < count carry the product to about 2^-53 (Ozaki et al. 2012, Sec. 3)
    pairs = [(i, j) for i in range(count) for j in range(len(right)) if i + j < count]
    total = None
    for i, j in sorted(pairs, key=sum, reverse=True):
        term = lhs[i] @ right[j]
        total = term if total is None else total + term
    return total


def pairwise_sum(q: torch.Tensor) -> torch.Tensor:
    """q [..., n] summed over its last axis by halving (pairwise summation), with elementwise adds only.

    Each row's bits depend on that row alone, on every device: a reduction kernel may instead split a
    row differently when the number of rows changes (CUDA's does).
    """
    n = q.shape[-1]
    width = 1 << max(n - 1, 0).bit_length()
    if width != n:
        q = torch.nn.functional.pad(q, (0, width - n))  # + 0.0 is exact
    while q.shape[-1] > 1:
        half = q.shape[-1] // 2
        q = q[..., :half] + q[..., half:]
    return q[..., 0]


# Below this many multiply-adds per call, a denoiser runs on one thread: on a busy 2-core machine,
# waking torch's and MKL's thread pools for a few milliseconds of work costs 10-30x the work itself
# (benchmarks/README.md, "Analytic models and the Fréchet distance").
_PARALLEL_WORK = 1 << 27


@contextmanager
def _threads_for(work: int, device: torch.device) -> Iterator[None]:
    """Run a CPU call of `work` multiply-adds on one thread when it is too small to share."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or work >= _PARALLEL_WORK:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sigma_squared(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sigma as float64 [B] on x's device, squared (a scalar sigma is broadcast)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
    return sigma.expand(x.shape[0]) ** 2


class GaussianMixture(nn.Module):
    """Exact denoiser of p(y) = sum_k w_k N(mu_k, S_k): posterior-weighted Wiener filters (EDM Eq. 2-3).

    With cond=True each component is a class (label_dim = K) and D conditions on it.
    """

    sigma_min = 0.0
    sigma_max = math.inf

    def __init__(
        self,
        *,
        weights: Sequence[float] | torch.Tensor,
        means: torch.Tensor,
        covs: torch.Tensor,
        shape: Sequence[int] | None = None,
        cond: bool = False,
        name: str = "gmm",
    ):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        K, D = means.shape
        if weights.shape != (K,) or (weights <= 0).any():
            raise ConfigError(f"gmm weights must be {K} positive numbers")
        self.diagonal = covs.shape == (K, D)
        if not self.diagonal and covs.shape != (K, D, D):
            raise ConfigError(f"gmm covariances must have shape ({K}, {D}) or ({K}, {D}, {D}), got {tuple(covs.shape)}")
        shape = tuple(int(s) for s in (shape or (D,)))
        if math.prod(shape) != D:
            raise ConfigError(f"gmm shape {shape} does not hold {D} values")
        self.name = name
        self.sample_shape = shape
        if len(shape) == 3:
            self.img_channels, self.img_resolution = shape[0], shape[1]
        else:
            self.img_channels, self.img_resolution = shape[0], 1
        self.label_dim = K if cond else 0
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("means", means)
        if self.diagonal:
            lam, U = covs, torch.empty(0, dtype=torch.float64)
        else:
            covs = 0.5 * (covs + covs.transpose(1, 2))
            with _threads_for(K * D**3, covs.device):
                lam, U = torch.linalg.eigh(covs)
        if (lam < -1e-12).any():
            raise ConfigError("gmm covariances must be positive semi-definite")
        self.register_buffer("lam", lam.clamp(min=0))
        self.register_buffer("U", U)
        if not self.diagonal:  # exact slices of U and U^T for exact_matmul (derived: not in the state dict)
            D = means.shape[1]
            for name, m in (("U", U), ("Ut", U.transpose(1, 2))):
                parts = exact_slices(m.contiguous(), D)
                for i, part in enumerate(parts):
                    self.register_buffer(f"_{name}_{i}", part, persistent=False)
            self._n_slices = len(parts)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def _slices(self, name: str) -> list[torch.Tensor]:
        return [getattr(self, f"_{name}_{i}") for i in range(self._n_slices)]

    def _rotate(self, v: torch.Tensor) -> torch.Tensor:
        """Coordinates of v [B, K, D] in each component's eigenbasis: (U_k^T v_k)_e = sum_d v_kd U_kde."""
        if self.diagonal:
            return v
        return exact_matmul(v.transpose(0, 1), self._slices("U")).transpose(0, 1)

    def _unrotate(self, w: torch.Tensor) -> torch.Tensor:
        """Back from each eigenbasis: (U_k w_k)_d = sum_e w_ke U_kde."""
        if self.diagonal:
            return w
        return exact_matmul(w.transpose(0, 1), self._slices("Ut")).transpose(0, 1)

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None, **_: Any
    ) -> torch.Tensor:
        """D(x; sigma) for x [B, *sample_shape], sigma scalar or [B]; float64 inside, x's dtype out.

        Batched; each sample's result is bit-identical whatever the batch holds (see exact_matmul).
        """
        K, D = self.means.shape
        work = x.shape[0] * K * D * (1 if self.diagonal else D * self._n_slices * (self._n_slices + 1))
        with _threads_for(work, x.device):
            return self._denoise(x, sigma, class_labels)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        B = x.shape[0]
        y = x.to(torch.float64).reshape(B, 1, -1)
        s2 = _sigma_squared(sigma, x).reshape(B, 1, 1)
        w = self._rotate(y - self.means[None])  # [B, K, D]
        var = self.lam[None] + s2  # covariance of p_sigma per component, in its eigenbasis
        # log N(x; mu_k, S_k + sigma^2 I) from the eigen-decomposition
        logp = -0.5 * (pairwise_sum(w**2 / var) + pairwise_sum(var.log()) + w.shape[-1] * math.log(2 * math.pi))
        logits = logp + self.weights.log()[None]
        mask = _one_hot_mask(class_labels, self.means.shape[0], B, x.device) if self.label_dim else None
        if mask is not None:
            logits = logits + mask
        r = torch.softmax(logits, dim=1)  # posterior over components
        # E[y | x, k] = mu_k + S_k (S_k + sigma^2 I)^-1 (x - mu_k)  (Gaussian conditioning)
        post = self.means[None] + self._unrotate(self.lam[None] / var * w)
        out = r[:, 0, None] * post[:, 0]
        for k in range(1, post.shape[1]):  # sum over components in a fixed order, elementwise
            out = out + r[:, k, None] * post[:, k]
        return out.reshape(x.shape).to(x.dtype)

    def mean(self) -> torch.Tensor:
        """Exact mean of the data distribution, flattened [D]."""
        return (self.weights[:, None] * self.means).sum(0)

    def component_covs(self) -> torch.Tensor:
        """Full covariance of each component [K, D, D]."""
        if self.diagonal:
            return torch.diag_embed(self.lam)
        return self.U @ torch.diag_embed(self.lam) @ self.U.transpose(1, 2)

    def covariance(self) -> torch.Tensor:
        """Exact covariance of the data distribution [D, D]: sum w_k (S_k + mu_k mu_k^T) - mu mu^T."""
        mu = self.mean()
        second = (
            self.weights[:, None, None] * (self.component_covs() + self.means[:, :, None] * self.means[:, None, :])
        ).sum(0)
        return second - mu[:, None] * mu[None, :]

    def sample_data(
        self, n: int, generator: torch.Generator | None = None, *, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """n exact samples of the data distribution, shaped [n, *sample_shape]."""
        if labels is None:
            labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        scaled = z * self.lam[labels].sqrt()
        if not self.diagonal:
            scaled = torch.einsum("nde,ne->nd", self.U[labels], scaled)
        return (self.means[labels] + scaled).reshape(n, *self.sample_shape)


class FiniteDataset(nn.Module):
    """Ideal denoiser of a finite set of points: softmax(-|x - y_i|^2 / 2 sigma^2)-weighted mean (EDM Eq. 57)."""

    sigma_min = 0.0
    sigma_max = math.inf

    def __init__(self, *, points: torch.Tensor, name: str = "ideal"):
        super().__init__()
        points = torch.as_tensor(points, dtype=torch.float64)
        if points.ndim < 2 or points.shape[0] < 1:
            raise ConfigError("a finite dataset needs at least one point")
        self.name = name
        self.sample_shape = tuple(points.shape[1:])
        if len(self.sample_shape) == 3:
            self.img_channels, self.img_resolution = self.sample_shape[0], self.sample_shape[1]
        else:
            self.img_channels, self.img_resolution = self.sample_shape[0], 1
        self.label_dim = 0
        self.register_buffer("points", points.reshape(points.shape[0], -1).contiguous())
        # exact slices of the points for the weighted mean (derived: not part of the state dict)
        parts = exact_slices(self.points, self.points.shape[0])
        for i, part in enumerate(parts):
            self.register_buffer(f"_points_{i}", part, persistent=False)
        self._n_slices = len(parts)

    def _point_slices(self) -> list[torch.Tensor]:
        return [getattr(self, f"_points_{i}") for i in range(self._n_slices)]

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None, **_: Any
    ) -> torch.Tensor:
        """D(x; sigma) for x [B, *sample_shape], sigma scalar or [B]; float64 inside, x's dtype out.

        Batched; distances (pairwise_sum) and the weighted mean (exact_matmul) are computed so that each
        sample's result is bit-identical whatever the batch holds. Scratch memory
        is bounded by chunking over the batch and, in blocks fixed by the dataset alone, over the points.
        """
        n, D = self.points.shape
        with _threads_for(x.shape[0] * n * D * (1 + self._n_slices * (self._n_slices + 1) // 2), x.device):
            return self._denoise(x, sigma)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        y = x.to(torch.float64).reshape(B, -1)
        s2 = _sigma_squared(sigma, x)[:, None]
        n, D = self.points.shape
        block = _rows(D)  # points per block: fixed by the dataset, never by the batch
        step = _rows(min(n, block) * D)
        out = []
        for b in range(0, B, step):
            yb = y[b : b + step]
            d2 = torch.cat(
                [
                    pairwise_sum((yb[:, None, :] - self.points[None, i : i + block]).square())
                    for i in range(0, n, block)
                ],
                dim=1,
            )  # [b, n] squared distances
            r = torch.softmax(-d2 / (2 * s2[b : b + step]), dim=1)  # EDM Eq. 57 weights
            out.append(exact_matmul(r, self._point_slices()))  # sum_i r_i y_i
        return torch.cat(out).reshape(x.shape).to(x.dtype)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = torch.randint(self.points.shape[0], (n,), generator=generator)
        return self.points[idx].reshape(n, *self.sample_shape)


# ---- built-in names -------------------------------------------------------------------------------


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in str(text).lower().split("x"))
    except ValueError:
        raise ConfigError(f"shape '{text}' must look like 3x8x8 or 2") from None
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"shape '{text}' must have positive sizes")
    return shape


def make_gmm(
    *,
    components: int = 3,
    shape: Sequence[int] = (3, 8, 8),
    cov: str = "full",
    rank: int = 8,
    seed: int = 0,
    cond: bool = False,
) -> GaussianMixture:
    """A reproducible mixture of smooth image-like components with low-rank-plus-diagonal covariances."""
    if cov not in ("full", "diag"):
        raise ConfigError(f"gmm cov must be 'full' or 'diag', got '{cov}'")
    if components < 1:
        raise ConfigError("gmm needs at least one component")
    g = np.random.default_rng(seed)
    D = math.prod(shape)
    # smooth means in [-0.8, 0.8]: cumulative sums of noise along the flattened image
    raw = g.standard_normal((components, D)).cumsum(axis=1)
    raw -= raw.mean(axis=1, keepdims=True)
    means = 0.8 * np.tanh(raw / (raw.std(axis=1, keepdims=True) + 1e-12))
    weights = g.uniform(0.5, 1.5, components)
    if cov == "diag":
        covs = g.uniform(0.01, 0.09, (components, D))
    else:
        r = max(1, min(rank, D))
        A = g.standard_normal((components, D, r)) * (0.3 / math.sqrt(r))
        covs = A @ A.transpose(0, 2, 1) + 0.01 * np.eye(D)[None]
    return GaussianMixture(
        weights=torch.tensor(weights),
        means=torch.tensor(means),
        covs=torch.tensor(covs),
        shape=shape,
        cond=cond,
        name="gmm",
    )


def _load_points(path: str) -> torch.Tensor:
    """Points of an `ideal` model from an .npz ('images' or its first array) or a plain .npy.

    uint8 NHWC images (EDM's dataset layout) become NCHW in [-1, 1]; other numeric arrays [n, ...] are
    taken as they are.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ideal: no such file {p}")
    try:
        arr = np.load(p, allow_pickle=False)  # a plain .npy gives the array, an npz its archive
        if isinstance(arr, np.lib.npyio.NpzFile):
            with arr as data:
                arr = data["images"] if "images" in data.files else data[data.files[0]]
    except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"ideal: cannot read dataset points from {p} (a numeric .npy or .npz): {exc}") from None
    if arr.dtype.kind not in "biuf" or arr.ndim < 2 or arr.shape[0] < 1 or arr.size == 0:
        raise ConfigError(
            f"ideal: {p} must hold numeric points [n, ...] or uint8 images [n, H, W, C], "
            f"got {arr.dtype} {list(arr.shape)}"
        )
    if arr.dtype == np.uint8 and arr.ndim == 4:  # NHWC uint8 images -> NCHW in [-1, 1]
        return torch.from_numpy(arr.astype(np.float64) / 127.5 - 1).permute(0, 3, 1, 2).contiguous()
    points = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(points).all():
        raise ConfigError(f"ideal: {p} holds NaN or Inf")
    return torch.from_numpy(points)


def make_ideal(
    *, n: int = 32, seed: int = 0, path: str | None = None, shape: Sequence[int] = (3, 8, 8)
) -> FiniteDataset:
    """The ideal denoiser of `n` points drawn from the default mixture, or of the images in an npz file."""
    if path is not None:
        return FiniteDataset(points=_load_points(path), name="ideal")
    if n < 1:
        raise ConfigError("ideal needs n >= 1 points")
    base = make_gmm(shape=shape, seed=seed)
    return FiniteDataset(points=base.sample_data(n, torch.Generator().manual_seed(seed)), name="ideal")


_OPTION_TYPES: dict[str, dict[str, Any]] = {
    "gmm": {
        "components": int,
        "shape": _parse_shape,
        "cov": str,
        "rank": int,
        "seed": int,
        "cond": lambda v: str(v).lower() in ("1", "true", "yes"),
    },
    "ideal": {"n": int, "seed": int, "path": str, "shape": _parse_shape},
}
_FACTORIES = {"gmm": make_gmm, "ideal": make_ideal}
BUILTIN_NAMES = tuple(_FACTORIES)


def is_builtin(spec: str) -> bool:
    """True when `spec` names a built-in analytic model (`gmm`, `ideal`, optionally with `:key=value,...`)."""
    return spec.split(":", 1)[0] in _FACTORIES


def load_builtin(spec: str) -> nn.Module:
    """Build an analytic model from `name[:key=value,...]`, e.g. `gmm:components=5,shape=1x16x16,cov=diag`."""
    name, _, rest = spec.partition(":")
    if name not in _FACTORIES:
        raise UnknownNameError("built-in model", name, _FACTORIES)
    types = _OPTION_TYPES[name]
    kwargs: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"model option '{item}' must be key=value")
        if key not in types:
            raise UnknownNameError(f"option of '{name}'", key, types)
        try:
            kwargs[key] = types[key](value)
        except ValueError:
            raise ConfigError(f"model option {key}={value} is not valid") from None
    model = _FACTORIES[name](**kwargs)
    model.spec = spec
    return model


def reference_solution(
    denoiser: Any,
    x: torch.Tensor,
    *,
    sigma_from: float,
    sigma_to: float,
    class_labels: torch.Tensor | None = None,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    method: str = "DOP853",
) -> torch.Tensor:
    """Solve dx/dsigma = (x - D(x; sigma)) / sigma (EDM Eq. 3) from sigma_from to sigma_to > 0 with scipy.

    Integrated in u = ln sigma, where dx/du = x - D(x; e^u); float64 throughout.
    """
    from scipy.integrate import solve_ivp

    if not (sigma_from > 0 and sigma_to > 0):
        raise ConfigError("the reference solution runs between positive sigmas; take the final step to 0 yourself")
    shape = x.shape
    B = shape[0]

    def rhs(u: float, flat: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(flat).reshape(shape)
        sig = torch.full((B,), math.exp(u), dtype=torch.float64)
        with torch.no_grad():
            d = denoiser(xt, sig, class_labels).to(torch.float64)
        return (xt - d).reshape(-1).numpy()

    sol = solve_ivp(
        rhs,
        (math.log(sigma_from), math.log(sigma_to)),
        x.detach().to(torch.float64).cpu().reshape(-1).numpy(),
        method=method,
        rtol=rtol,
        atol=atol,
    )
    if not sol.success:
        raise RuntimeError(f"reference ODE solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)
