"""`diffbench fid` and `diffbench stats`: thin commands over diffbench.metrics."""

from __future__ import annotations

import math
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from diffbench.cli.app import app
from diffbench.cli.options import sampler_options
from diffbench.io_json import dumps_json

ExtractorOpt = Annotated[
    str, typer.Option("--extractor", help="Feature extractor: a registered name or module:factory.")
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option("--inception-weights", help="Local Inception weights (torch-fidelity's .pth state dict)."),
]
BatchOpt = Annotated[int, typer.Option("--batch", help="Images per feature-extraction batch.", min=1)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
CacheOpt = Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse cached statistics of a source.")]


class Shown(str, Enum):
    mean = "mean"
    min = "min"


def _device(device: str) -> str:
    from diffbench.device import check_device

    return check_device(device)


def _progress(label: str):
    """A progress callback drawing on a terminal's stderr, or None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total or None)

    return bar, update


@app.command("stats")
def stats_cmd(
    source: Annotated[Path, typer.Argument(help="An image folder, a .zip, or an .npz of uint8 NHWC images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Statistics file to write (.npz).")],
    extractor: ExtractorOpt = "inception-v3-compat",
    inception_weights: WeightsOpt = None,
    keep_features: Annotated[
        bool,
        typer.Option("--keep-features", help="Also store the features (needed for KID, precision/recall)."),
    ] = False,
    batch: BatchOpt = 100,
    device: DeviceOpt = "auto",
    cache: CacheOpt = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Compute reference statistics (mu, sigma; EDM's npz layout) of a set of images.

    Example: diffbench stats cifar10-train/ -o cifar10-32x32.npz
    """
    from diffbench.errors import OutputExistsError
    from diffbench.metrics.extractors import load_extractor
    from diffbench.metrics.sources import open_source
    from diffbench.metrics.stats import cached_statistics, save_statistics

    if out.exists() and not overwrite:
        raise OutputExistsError(f"output {out} already exists; pass --overwrite to replace it")
    src = open_source(source)
    ext = load_extractor(extractor, device=_device(device), weights_path=inception_weights)
    bar, update = _progress("features")
    if bar is not None:
        bar.start()
    try:
        stats, hit = cached_statistics(
            src, extractor=ext, batch=batch, keep_features=keep_features, cache=cache, progress=update
        )
    finally:
        if bar is not None:
            bar.stop()
    save_statistics(stats, out)
    h, w = src.resolution
    typer.echo(
        f"wrote {out}: {stats.n} images {w}x{h}, extractor {stats.extractor_id}, {stats.dim}-d"
        f"{', features kept' if stats.features is not None else ''}{' (from cache)' if hit else ''}"
    )


def _fmt(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _reference(ref: str | None, model: str | None) -> str:
    """--ref as given (a path or a registry name), or the reference a registry model's entry names."""
    from diffbench.errors import ConfigError

    try:
        from diffbench.models.registry import resolve_reference
    except ImportError:  # registry without reference names
        resolve_reference = None
    if ref is None:
        named = None
        if model is not None and resolve_reference is not None:
            from diffbench.models.registry import reference_for_model

            named = reference_for_model(model)
        if named is None:
            raise ConfigError(
                "give --ref (statistics .npz, reference images, or a registry name such as fid-cifar10-32x32)"
            )
        ref = named
    if resolve_reference is not None and not Path(ref).exists():
        return str(resolve_reference(ref))
    return ref


def _scored(result: Any) -> str | None:
    """'heun on edm, NFE 35 (18 steps, endpoint edm)' for results sampled straight from a spec."""
    plan = (result.samples or {}).get("plan")
    if not plan:
        return None
    dtz = ", denoise to zero" if plan.get("denoise_to_zero") else ""
    return (
        f"sampler {plan['solver']} on {plan['schedule']}, NFE {plan['nfe']} per sample "
        f"({plan['steps']} steps, endpoint {plan['endpoint']}{dtz}), seeds {result.samples.get('seeds')}"
    )


def render_fid(result: Any) -> str:
    """Human-readable lines for a FIDResult; every line names n."""
    ref = Path(result.ref).name if result.ref else "reference"
    n = result.n if result.n is not None else "unknown"
    # FID is the Fréchet distance in Inception features only; any other feature space is named as such
    inception = str(result.extractor_id or "").startswith("inception")
    name = "FID" if inception else f"FD ({str(result.extractor_id).split('-')[0].split('@')[0]} features)"
    lines = [f"{name} {_fmt(result.fid)}  (n={n}, extractor {result.extractor_id}, ref {ref})"]
    scored = _scored(result)
    if scored:
        lines.append(scored)
    if len(result.loo) > 1:
        k = len(result.loo)
        lines.append(
            f"{result.confidence:.0%} jackknife interval over {k} seed blocks of the {name} of all {n}: "
            f"[{_fmt(result.ci_low)}, {_fmt(result.ci_high)}] (± {_fmt(result.ci_high - result.fid)}, "
            f"SE {_fmt(result.se)})"
        )
        lines.append(
            f"{name.split(' ')[0]}-inf {_fmt(result.fid_inf)} [{_fmt(result.inf_low)}, {_fmt(result.inf_high)}]: "
            "jackknife bias-corrected estimate at infinite n"
        )
        lines.append(f"per block (n={result.block_n} each): " + ", ".join(_fmt(v) for v in result.blocks))
    x = result.extras
    if "kid_mean" in x:
        spread = (
            f" ± {x['kid_std']:.6f}"
            if x.get("kid_std") is not None
            else " (no spread: every subset is the same sample)"
        )
        lines.append(f"KID {x['kid_mean']:.6f}{spread}")
    if "precision" in x:
        lines.append(f"precision {x['precision']:.4f}, recall {x['recall']:.4f} (k-NN manifolds, k=3)")
    if "is_mean" in x:
        lines.append(f"Inception Score {x['is_mean']:.4f} ± {x['is_std']:.4f}")
    by = f" (classifier {result.samples['classifier']})" if (result.samples or {}).get("classifier") else ""

    def ci(key: str) -> str:
        return f" [{x[key + '_low']:.4g}, {x[key + '_high']:.4g}]" if key + "_low" in x else ""

    if "class_accuracy" in x:
        lines.append(f"class-accuracy {x['class_accuracy']:.4g}{ci('class_accuracy')}{by}")
    if "inv_prob" in x:
        q = "/".join(f"{x[f'inv_prob_q{p}']:.4g}" for p in (50, 90, 99) if f"inv_prob_q{p}" in x)
        lines.append(f"inv-prob E[1/p(c|x)] {x['inv_prob']:.4g}{ci('inv_prob')}, 1/p quantiles 50/90/99 {q}")
        lines[-1] += f", no clipping{by}"
    return "\n".join(lines)


@app.command("fid")
@sampler_options()
def fid_cmd(
    samples: Annotated[
        str | None,
        typer.Argument(help="Image folder, .zip, .npz of images, or a statistics .npz; omit with --model."),
    ] = None,
    ref: Annotated[
        str | None,
        typer.Option(
            "--ref",
            help="Reference statistics (.npz mu/sigma), reference images, or a registry name (fid-cifar10-32x32); "
            "optional when --model is a registry model that names its reference.",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Sample straight from this model (no images written).")
    ] = None,
    seeds: Annotated[str, typer.Option(help="With --model: seeds, e.g. '0-49999'.")] = "0-49999",
    class_: Annotated[int | None, typer.Option("--class", help="With --model: fixed class.")] = None,
    blocks: Annotated[
        int,
        typer.Option(
            help="Disjoint seed blocks K: the FID of all N with its delete-one-block jackknife interval.", min=1
        ),
    ] = 1,
    show: Annotated[
        Shown | None, typer.Option(help="Retired: the value is the FID of all N (refused with the reason).")
    ] = None,
    kid: Annotated[bool, typer.Option("--kid", help="Also KID (needs reference features).")] = False,
    pr: Annotated[bool, typer.Option("--pr", help="Also precision/recall (needs reference features).")] = False,
    isc: Annotated[bool, typer.Option("--is", help="Also the Inception Score.")] = False,
    class_metrics: Annotated[
        bool,
        typer.Option(
            "--class-metrics",
            help="With --model: also class-accuracy and inv-prob (E[1/p(c|x)]) of the intended class "
            "(a conditional model, or --class with classifier guidance).",
        ),
    ] = False,
    eval_classifier: Annotated[
        str | None,
        typer.Option(
            "--eval-classifier",
            help="With --class-metrics: the clean classifier, package.module:factory (a module x in [-1, 1] -> "
            "logits); default: the built-in digits classifier.",
        ),
    ] = None,
    extractor: Annotated[
        str | None,
        typer.Option(
            "--extractor",
            help="Feature extractor: a registered name or module:factory. Default: the space the reference "
            "statistics were computed in (built-in digits: digits), else inception-v3-compat.",
        ),
    ] = None,
    inception_weights: WeightsOpt = None,
    batch: BatchOpt = 100,
    device: DeviceOpt = "auto",
    allow_small_n: Annotated[
        bool,
        typer.Option("--allow-small-n", help="Compute FID even with fewer samples than feature dims + 1."),
    ] = False,
    cache: CacheOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    *,
    sampler: dict[str, Any],
) -> None:
    """FID of samples against reference statistics (Inception-v3 pool3, REFERENCE §5).

    Examples: diffbench fid samples/ --ref cifar10-32x32.npz --blocks 20;
    diffbench fid --model gmm --nfe 35 --seeds 0-9999 --ref gmm-ref.npz
    """
    from diffbench.errors import ConfigError
    from diffbench.metrics.extractors import check_extractor_name
    from diffbench.metrics.fid import RETIRED_SHOWN, fid

    if show is not None:
        raise ConfigError(f"--show is retired: {RETIRED_SHOWN}")
    from diffbench.distributed import launched

    if model is None and launched():
        raise ConfigError("under torchrun, diffbench fid runs only with --model (files are scored in one process)")
    if extractor is not None:
        check_extractor_name(extractor)
    if model is None and sampler:
        from diffbench.cli.options import BY_KEY

        flags = [BY_KEY[k].flag for k in sampler]
        raise ConfigError(f"{', '.join(flags)} {'applies' if len(flags) == 1 else 'apply'} only with --model")
    if model is None and (class_metrics or eval_classifier is not None):
        raise ConfigError("--class-metrics and --eval-classifier apply only with --model (files carry no classes)")
    if inception_weights is not None and not inception_weights.exists():
        raise ConfigError(f"--inception-weights {inception_weights} does not exist")
    if model is not None and samples is not None:
        raise ConfigError("give SAMPLES or --model, not both")
    if model is None and samples is None:
        raise ConfigError("give SAMPLES (folder, zip, npz) or --model with a sampler spec")
    spec = None
    if model is not None:  # the whole sampler spec is checked before anything is fetched or read
        from diffbench.sampling.spec import SamplerSpec

        spec = SamplerSpec.make(**sampler)
    ref = _reference(ref, model)
    if extractor is None:
        from diffbench.cli.sweep import _reference_and_space

        extractor = _reference_and_space(model or "", ref, None)[1] or "inception-v3-compat"
    w = None
    if model is not None:  # under torchrun: the ranks share each batch round, rank 0 prints
        from diffbench.cli.ranks import join, rank_device

        w = join()
        device = rank_device(device, w)
        if w.main and spec is not None and str(spec.prior or "").startswith("ideal:"):  # issue 22
            from diffbench.priors import IDEAL_NOTE

            typer.echo(f"warning: {IDEAL_NOTE}", err=True)
    dev = _device(device)
    bar, update = _progress("samples" if model is not None else "features") if w is None or w.main else (None, None)
    if bar is not None:
        bar.start()
    common = dict(  # the scoring options, the same whether images come from files or straight from a sampler
        ref=ref,
        extractor=extractor,
        weights_path=inception_weights,
        device=dev,
        batch=batch,
        blocks=blocks,
        kid=kid,
        precision_recall=pr,
        inception_score=isc,
        allow_small_n=allow_small_n,
        cache=cache,
        progress=update,
    )
    try:
        if model is not None:  # sampled and scored by the sweep's cell runner: one code path for both
            from diffbench.seeds import parse_seeds
            from diffbench.sweep.single_cell import fid_of_spec

            result = fid_of_spec(
                model, spec=spec, seeds=parse_seeds(seeds), class_label=class_, world=w,
                class_metrics=class_metrics, eval_classifier=eval_classifier, **common,
            )  # fmt: skip
        else:
            result = fid(samples, **common)
    finally:
        if bar is not None:
            bar.stop()
    if w is not None and not w.main:
        return
    if as_json:
        typer.echo(dumps_json(result.to_dict()))
    else:
        typer.echo(render_fid(result))
