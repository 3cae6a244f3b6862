"""Per-seed random streams (EDM's generate.py convention, REFERENCE §1): one generator per image.

From each image's generator, in this order: the latents (float32, shape C,H,W, whatever torch's default
dtype), then the class label (randint(label_dim), int64, drawn for every conditional model even when the
class is fixed), then one standard normal per sampler step in the state's dtype (float64 unless the run is
float32: EDM's randn_like(x) on its float64 state). Step i's noise is always the i-th draw after the latents and
label: a step that needs no noise may skip its draw and the source burns it when a later step asks, so
skipping changes nothing. Every image therefore depends only on its seed, not on the batch it ran in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffbench.sampling.vocabulary import NOISE_MODES  # noqa: F401  (re-exported)


class NoiseSource:
    """The random streams of one batch of seeds; draws are stacked per image, batch-size invariant."""

    def __init__(self, seeds: Sequence[int], *, device: torch.device | str = "cpu"):
        from diffbench.seeds import check_seed

        self.seeds = [check_seed(int(s)) for s in seeds]
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(s) for s in self.seeds]
        self._phase = 0  # 0: latents next, 1: label next, 2: steps
        self._next_step = 0

    def _advance(self, phase: int, what: str) -> None:
        if self._phase > phase:
            raise RuntimeError(f"{what} drawn out of order: the stream is latents, label, then steps")
        self._phase = phase + 1

    def latents(self, shape: Sequence[int]) -> torch.Tensor:
        """Standard-normal latents, float32, [B, *shape] (the first draw of each stream)."""
        self._advance(0, "latents")
        return torch.stack(
            [torch.randn(tuple(shape), generator=g, dtype=torch.float32, device=self.device) for g in self.generators]
        )

    def labels(self, label_dim: int) -> torch.Tensor:
        """One class index per image, randint(label_dim) (the second draw, for conditional models)."""
        self._advance(1, "labels")
        return torch.stack(
            [torch.randint(label_dim, (), generator=g, dtype=torch.int64, device=self.device) for g in self.generators]
        )

    def step(self, i: int, like: torch.Tensor) -> torch.Tensor:
        """The standard normal of step i, shaped and typed like `like` (earlier skipped draws are burnt)."""
        self._phase = max(self._phase, 2)
        if i < self._next_step:
            raise RuntimeError(f"step noise {i} asked for after step {self._next_step - 1}")
        shape, dtype = tuple(like.shape[1:]), like.dtype
        for _ in range(i - self._next_step):
            for g in self.generators:
                torch.randn(shape, generator=g, dtype=dtype, device=self.device)
        self._next_step = i + 1
        out = torch.stack([torch.randn(shape, generator=g, dtype=dtype, device=self.device) for g in self.generators])
        return out.to(like.device)

    def increment(self, i: int, sigma: float, sigma_next: float, like: torch.Tensor) -> torch.Tensor:
        """The standard normal a stochastic step i from sigma to sigma_next uses (here: the i-th draw)."""
        return self.step(i, like)


def _mix(*values: int) -> int:
    """splitmix64 over a tuple of integers: a well-spread 63-bit seed for one Brownian-tree node."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


class BrownianTree:
    """A per-seed Brownian path W on [t0, t1], queryable at any t (virtual Brownian tree, Li et al. 2020).

    W(t1) and every bisection midpoint come from generators seeded by (seed, node), so W(t) is a fixed
    function of the seed: increments over a finer grid sum to those over a coarser one (a sweep over NFE
    refines one path). Midpoints follow the Brownian bridge; below `tol` the bridge is interpolated linearly.
    """

    def __init__(
        self,
        seed: int,
        shape: Sequence[int],
        t0: float,
        t1: float,
        *,
        tol: float = 1e-6,
        dtype: torch.dtype = torch.float64,
    ):
        if not t1 > t0:
            raise ValueError("a Brownian tree needs t1 > t0")
        self.seed, self.shape, self.t0, self.t1, self.dtype = (
            int(seed),
            tuple(shape),
            float(t0),
            float(t1),
            dtype,
        )
        self.depth = max(1, int(math.ceil(math.log2((t1 - t0) / tol))))
        self._cache: dict[int, torch.Tensor] = {}

    def _normal(self, node: int) -> torch.Tensor:
        out = self._cache.get(node)
        if out is None:
            g = torch.Generator().manual_seed(_mix(self.seed, node))
            out = torch.randn(self.shape, generator=g, dtype=self.dtype)
            if len(self._cache) < 4096:
                self._cache[node] = out
        return out

    def __call__(self, t: float) -> torch.Tensor:
        """W(t), with W(t0) = 0."""
        t = min(max(float(t), self.t0), self.t1)
        a, b = self.t0, self.t1
        wa = torch.zeros(self.shape, dtype=self.dtype)
        wb = math.sqrt(b - a) * self._normal(1)
        node = 1
        for _ in range(self.depth):
            if t == a:
                return wa
            if t == b:
                return wb
            m = 0.5 * (a + b)
            # Brownian bridge: W(m) | W(a), W(b) ~ N((W(a) + W(b))/2, (b - a)/4)
            wm = 0.5 * (wa + wb) + math.sqrt((b - a) / 4) * self._normal(2 * node)
            if t < m:
                b, wb, node = m, wm, 2 * node
            else:
                a, wa, node = m, wm, 2 * node + 1
        return wa + (wb - wa) * ((t - a) / (b - a))


class BrownianNoise(NoiseSource):
    """Per-seed streams whose step noise is the normalised increment of a Brownian path in sigma.

    Step i over [sigma_{i+1}, sigma_i] gets (W(sigma_i) - W(sigma_{i+1})) / sqrt(sigma_i - sigma_{i+1}): a
    standard normal, independent across disjoint steps, and the same path whatever the step count.
    Latents and labels still come from each seed's generator, as in NoiseSource.
    """

    def __init__(self, seeds: Sequence[int], *, device: torch.device | str = "cpu", sigma_min: float, sigma_max: float):
        super().__init__(seeds, device=device)
        self.range = (float(sigma_min), float(sigma_max))
        self._trees: dict[tuple[int, ...], list[BrownianTree]] = {}

    def increment(self, i: int, sigma: float, sigma_next: float, like: torch.Tensor) -> torch.Tensor:
        lo, hi = sorted((float(sigma), float(sigma_next)))
        if hi <= lo:
            return self.step(i, like)
        shape = tuple(like.shape[1:])
        trees = self._trees.get(shape)
        if trees is None:  # one fixed span per run range, so every step count queries the same path
            trees = [BrownianTree(s, shape, 0.0, self.range[1]) for s in self.seeds]
            self._trees[shape] = trees
        inc = torch.stack([(tree(hi) - tree(lo)) for tree in trees]) / math.sqrt(hi - lo)
        return inc.to(like.device, like.dtype)
