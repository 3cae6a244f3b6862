"""Per-seed random streams (EDM's generate.py convention, REFERENCE §1): one generator per image.

From each image's generator, in this order: the latents (float32, shape C,H,W), then the class label
(randint(label_dim), drawn for every conditional model even when the class is fixed), then one standard
normal per sampler step in the state's dtype. Step i's noise is always the i-th draw after the latents and
label: a step that needs no noise may skip its draw and the source burns it when a later step asks, so
skipping changes nothing. Every image therefore depends only on its seed, not on the batch it ran in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class NoiseSource:
    """The random streams of one batch of seeds; draws are stacked per image, batch-size invariant."""

    def __init__(self, seeds: Sequence[int], *, device: torch.device | str = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(s % (1 << 32)) for s in self.seeds]
        self._phase = 0          # 0: latents next, 1: label next, 2: steps
        self._next_step = 0

    def _advance(self, phase: int, what: str) -> None:
        if self._phase > phase:
            raise RuntimeError(f"{what} drawn out of order: the stream is latents, label, then steps")
        self._phase = phase + 1

    def latents(self, shape: Sequence[int]) -> torch.Tensor:
        """Standard-normal latents, float32, [B, *shape] (the first draw of each stream)."""
        self._advance(0, "latents")
        return torch.stack([torch.randn(tuple(shape), generator=g, device=self.device) for g in self.generators])

    def labels(self, label_dim: int) -> torch.Tensor:
        """One class index per image, randint(label_dim) (the second draw, for conditional models)."""
        self._advance(1, "labels")
        return torch.stack([torch.randint(label_dim, (), generator=g, device=self.device)
                            for g in self.generators])

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
        out = torch.stack([torch.randn(shape, generator=g, dtype=dtype, device=self.device)
                           for g in self.generators])
        return out.to(like.device)
