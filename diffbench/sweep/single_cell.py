"""The single-cell APIs over run_cell: FID of a sampler spec, the reference-solution error, a cell as FIDResult."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from diffbench.denoiser import Denoiser
from diffbench.distributed import SINGLE, World, load_on_ranks
from diffbench.errors import ConfigError
from diffbench.metrics.extractors import INCEPTION_ID, FeatureExtractor
from diffbench.metrics.fid import FIDResult, fid_result_of
from diffbench.metrics.reference_error import ReferenceErrorResult
from diffbench.sampling.spec import SamplerSpec
from diffbench.sweep.bench import Bench, _is_inception, deterministic_reason, prepare
from diffbench.sweep.cell import BatchProgress, CellResult, run_cell


def reference_error(
    denoiser: Denoiser,
    *,
    spec: SamplerSpec,
    seeds: Sequence[int],
    class_labels: int | None = None,
    batch: int = 64,
    device: str | torch.device = "cpu",
    ref_steps: int = 1024,
    cache: bool = True,
) -> ReferenceErrorResult:
    """RMS error of a deterministic sampler against scipy's adaptive solve (analytic models) or a long Heun.

    Both start from the same latents x_0 = z σ_0 (REFERENCE §1) and stop at the grid's last positive σ; with
    the edm endpoint the same final step to 0 (x = D(x; σ)) is applied to both, leaving discretisation error.
    The reference is cached per model fingerprint, batch of latents, labels and σ range.
    """
    why = deterministic_reason(spec)
    if why is not None:
        raise ConfigError(why)
    bench = prepare(
        denoiser,
        seeds=seeds,
        metrics=["ref-error"],
        batch=batch,
        device=device,
        class_label=class_labels,
        ref_steps=ref_steps,
        cache=cache,
    )
    r = run_cell(bench, spec)
    m = r.metrics["ref-error"]
    sig = [s for s in r.plan["sigmas"] if s > 0]
    return ReferenceErrorResult(
        rms=float(m["all"]),
        max_rms=float(m["max_rms"]),
        n=len(bench.seeds),
        nfe=r.nfe,
        solver=r.plan["solver"],
        reference=str(m["reference"]),
        sigma_from=float(sig[0]),
        sigma_to=float(sig[-1]),
        cached=int(m["cached"]),
    )


def fid_result(bench: Bench, result: CellResult, *, metric: str | None = None) -> FIDResult:
    """A cell's Fréchet distance (fid or fd) with its blocks, KID / P&R / IS extras, as `diffbench fid` shows it."""
    name = metric or next(m for m in ("fid", "fd") if m in result.metrics)
    return fid_result_of(
        result.metrics,
        metric=name,
        n=len(bench.seeds),
        extractor_id=bench.extractor_id,
        ref=bench.ref_label,
        ref_sha256=bench.ref_sha256,
        ref_n=None if bench.ref is None else bench.ref.n,
        samples={**result.provenance, "nfe_counted": result.nfe, "plan": result.plan},
    )


def fid_of_spec(
    model: Denoiser | str,
    *,
    spec: SamplerSpec,
    seeds: Sequence[int],
    ref: Any,
    extractor: str | FeatureExtractor = INCEPTION_ID,
    weights_path: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    batch: int = 100,
    blocks: int = 1,
    shown: str | None = None,
    class_label: int | None = None,
    kid: bool = False,
    precision_recall: bool = False,
    inception_score: bool = False,
    allow_small_n: bool = False,
    cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
    world: World | None = None,
    class_metrics: bool = False,
    eval_classifier: str | None = None,
) -> FIDResult:
    """FID (or FD in another feature space) of a sampler spec on a model, straight from the sampler.

    The same cell runner as `diffbench sweep`: a one-cell sweep with the same seeds gives the same number.
    shown: retired (the value is the FID of all seeds; a ConfigError says so).
    world: the ranks of a torchrun launch (diffbench.distributed): each loads the model (the node's first rank
    first) and samples its share of each round of batches; every rank returns the same result.
    class_metrics: also class-accuracy and inv-prob of the intended class (a conditional model or class_label;
    extras class_accuracy, inv_prob with their intervals and 1/p quantiles), under the built-in digits classifier
    or eval_classifier ('package.module:factory', a clean classifier x in [-1, 1] -> logits; issue 21).
    """
    world = world or SINGLE
    if shown is not None:
        from diffbench.metrics.fid import RETIRED_SHOWN

        raise ConfigError(f"shown is retired: {RETIRED_SHOWN}")
    metrics = ["fid" if _is_inception(extractor) else "fd"]
    metrics += ["kid"] * kid + ["pr"] * precision_recall + ["is"] * inception_score
    metrics += ["class-accuracy", "inv-prob"] * class_metrics
    if world.size > 1 and isinstance(model, str):
        from diffbench.models.load import load

        name = model
        model = load_on_ranks(world, lambda: load(name, device="cpu"))
        model_name: str | None = name
    else:
        model_name = None
    bench = world.everywhere(
        "preparing the cell",
        lambda: prepare(
            model,
            model_name=model_name,
            seeds=seeds,
            metrics=metrics,
            blocks=blocks,
            batch=batch,
            device=device,
            ref=ref,
            extractor=extractor,
            weights_path=weights_path,
            class_label=class_label,
            allow_small_n=allow_small_n,
            cache=cache,
            eval_classifier=eval_classifier,
            steered=spec.classifier_guidance is not None,
        ),
    )
    world.agree("the reference statistics (sha256)", bench.ref_sha256)

    def on_batch(p: BatchProgress) -> None:
        if progress is not None:
            progress(p.images_done, p.images_total)

    result = run_cell(bench, spec, on_batch=on_batch if world.main else None, world=world)
    out = fid_result(bench, result)
    if "inv-prob" in result.metrics or "class-accuracy" in result.metrics:
        named = result.metrics.get("inv-prob") or result.metrics["class-accuracy"]
        out.samples["classifier"] = named.get("classifier")  # the clean classifier that scored them
    return out
