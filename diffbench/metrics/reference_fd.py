"""ref-fd: the Fréchet distance of the reference ODE solution from the cell's own latents.

For a deterministic sampler the reference ODE solution (the one `ref-error` measures against: scipy for the
analytic models, a long Heun run otherwise, diffbench.metrics.reference_error) is what the sampler's samples
tend to as its steps shrink. Its FD against the same reference statistics, in the same feature space, is the
FD the network's ODE itself reaches from these latents, so FD(cell) − FD(reference) is the share of the
cell's FD that is discretisation error; what remains, FD(reference), is the network's (training) error plus
the prior's (the "whole error" view of Wang, He & Tao 2024, arXiv 2406.12839). Both FDs are taken on
the same seeds in the same blocks, so their difference has a paired jackknife interval.

The reference images are quantized as the samples are (EDM's rule, diffbench.io.quantize) and featurized by
the bench's extractor; the cell runner fills them in (batch.ref_features), so this module never imports the
sampler. Like ref-error it applies to deterministic samplers only (the ODE is not a stochastic sampler's
limit); the reference solves are cached per latents and σ range, so ref-error and ref-fd, and every cell of a
sweep on one σ range, share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from diffbench.metrics.accumulators import MomentsAcc
from diffbench.metrics.reference_error import is_analytic


def _moments(ctx: Any) -> MomentsAcc:
    return MomentsAcc(ctx.ref.dim if ctx.ref is not None else 0)


def _add_reference_features(acc: MomentsAcc, batch: Any) -> None:
    assert batch.ref_features is not None
    acc.add(batch.ref_features)


def _value(states: Sequence[Any], ctx: Any) -> tuple[float, dict[str, Any]]:
    """FD of the union of the blocks' reference-solution feature moments to the reference statistics."""
    from diffbench.metrics.frechet import _moments_fd

    value, extras = _moments_fd(states, ctx)
    return value, {**extras, "reference": ctx.meta.get("ref_method")}


def _options(ctx: Any) -> dict[str, Any]:
    return {} if is_analytic(ctx.model) else {"ref_steps": ctx.options["ref_steps"]}


def _register() -> None:
    from diffbench.metrics.registry import Metric, State, register_metric

    register_metric(
        Metric(
            "ref-fd",
            "lower",
            ("reference-features", "ref-moments"),
            "Fréchet distance of the reference ODE solution from the same latents (FD − ref-fd: discretisation)",
            State("ref_features", _moments, _add_reference_features),
            _value,
            options=_options,
            infinite_n=True,
        )
    )


_register()
