"""Run a sampler spec over seeds: one batch at a time, one random stream per seed, NFE counted and checked."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from diffbench.denoiser import MAIN, Denoiser, Evaluator, check_denoiser, plain, sample_shape
from diffbench.errors import ConfigError, NonFiniteError
from diffbench.provenance import compact_seeds, environment, model_info
from diffbench.sampling.guidance import (
    CLASSIFIER_NET,
    GUIDE_NET,
    NFE_CONVENTION,
    NULL,
    NULL_NET,
    Guidance,
    check_classifier,
    guidance_for,
    load_guide,
    networks,
)
from diffbench.sampling.initial import initial_state
from diffbench.sampling.noise import BrownianNoise, NoiseSource
from diffbench.sampling.ode import TimeParam
from diffbench.sampling.plan import Plan, plan
from diffbench.sampling.solvers import StepInfo, get_solver
from diffbench.sampling.spec import SamplerSpec, resolved_spec


@dataclass(frozen=True)
class Progress:
    """Reported after every solver step: which batch, which step, how many images are done."""

    batch: int
    batches: int
    step: int
    steps: int
    images_done: int
    images_total: int


@dataclass
class Batch:
    """One finished batch: images (float, unclipped, N,C,H,W), its seeds, integer class labels and NFE counted."""

    images: torch.Tensor
    seeds: list[int]
    class_labels: torch.Tensor | None
    nfe: int
    counts: dict[str, float] = field(default_factory=dict)  # network evaluations per sample, per network


@dataclass
class Samples:
    """The result of `sample`: images, the NFE counted per sample, the grid used, seeds and provenance."""

    images: torch.Tensor
    nfe: int
    sigmas: torch.Tensor
    seeds: list[int]
    class_labels: torch.Tensor | None
    plan: Plan
    provenance: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA GPU is available")
    return dev


def _class_indices(class_labels: Any, n: int, label_dim: int) -> torch.Tensor | None:
    if class_labels is None:
        return None
    if label_dim == 0:
        raise ConfigError("class labels were given, but the model is unconditional")
    idx = torch.as_tensor(class_labels, dtype=torch.int64).reshape(-1)
    if idx.numel() == 1:
        idx = idx.expand(n)
    if idx.numel() != n:
        raise ConfigError(f"{idx.numel()} class labels for {n} samples")
    if (idx < 0).any() or (idx >= label_dim).any():
        raise ConfigError(f"class labels must be in [0, {label_dim - 1}]")
    return idx


def plan_spec(model: Denoiser, spec: SamplerSpec, guidance: Guidance | None = None) -> Plan:
    """The budget plan of a sampler spec on a model (sigma grid, steps, NFE), without moving the model; under
    guidance the budget is met under its costs (2 per guided evaluation, 1 elsewhere)."""
    guidance = guidance if guidance is not None else guidance_for(model, spec)
    if guidance is not None and spec.guidance_interval is not None:
        _check_interval(model, spec, guidance)
    return plan(
        model,
        **_grid_options(spec),
        nfe=spec.nfe,
        steps=spec.steps,
        nfe_policy=spec.nfe_policy,
        cost=guidance.cost if guidance is not None and guidance.any_active else None,
    )


def _grid_options(spec: SamplerSpec) -> dict[str, Any]:
    """The spec's keywords of plan() that fix the grid and the solver (all but the budget)."""
    return {
        "solver": spec.solver,
        "schedule": spec.schedule,
        "endpoint": spec.endpoint,
        "denoise_to_zero": spec.denoise_to_zero,
        "sigma_min": spec.sigma_min,
        "sigma_max": spec.sigma_max,
        "schedule_options": spec.schedule_options(),
        "solver_options": spec.solver_options(),
    }


def _check_interval(model: Denoiser, spec: SamplerSpec, guidance: Guidance) -> None:
    """The guidance interval must lie in the sigma range the run samples ([sigma_min, sigma_max] of its grid, the
    model's range clamped by the schedule): HI in (sigma_min, sigma_max]. One line when it does not."""
    unit = plan(model, **_grid_options(spec), steps=get_solver(spec.solver).min_steps)
    lo, hi = unit.sigma_min, unit.sigma_max
    if not lo < guidance.hi <= hi:
        raise ConfigError(
            f"--guidance-interval {guidance.lo:g},{guidance.hi:g} lies outside the sigma range of the run "
            f"[{lo:g}, {hi:g}]: HI must be in ({lo:g}, {hi:g}]"
        )


def planned_counts(model: Denoiser, p: Plan, guidance: Guidance | None, options: dict[str, Any]) -> dict[str, float]:
    """Network evaluations per sample the plan spends, per network: main; null or guide where --guidance acts;
    classifier (one forward + backward pass each) where classifier guidance acts."""
    from diffbench.sampling.plan import step_costs

    if guidance is None or not guidance.any_active:
        return {MAIN: float(p.nfe)}
    info = get_solver(p.solver)
    evaluations = sum(step_costs(model, info, p.sigmas, options, None))
    out = {MAIN: float(evaluations)}
    classifier = 0
    if guidance.classifier_active:  # one classifier evaluation (forward + backward) where it acts
        g = guidance
        classifier = sum(step_costs(model, info, p.sigmas, options, lambda s: 1 + g.classifier_inside(s))) - evaluations
        out[CLASSIFIER_NET] = float(classifier)
    if guidance.active:
        ref = NULL_NET if guidance.guide == NULL else GUIDE_NET
        out[ref] = float(p.nfe - evaluations - classifier)
    return out


class Sampler:
    """A planned run of one spec on one denoiser: `run(seeds)` samples one batch (used by iter_batches)."""

    def __init__(self, denoiser: Denoiser, spec: SamplerSpec, *, device: str | torch.device = "auto"):
        check_denoiser(denoiser)
        self.device = resolve_device(device)
        if isinstance(denoiser, torch.nn.Module):
            denoiser = denoiser.to(self.device).eval()
        self.denoiser, self.spec = denoiser, spec
        self.info = get_solver(spec.solver)
        self.guidance = guidance_for(denoiser, spec)
        self.plan = plan_spec(denoiser, spec, self.guidance)
        self.options = spec.solver_options()
        self.counts = planned_counts(denoiser, self.plan, self.guidance, self.options)
        self.networks = networks(denoiser, self.guidance)
        for name, net in self.networks.items():
            if isinstance(net, torch.nn.Module):
                self.networks[name] = net.to(self.device).eval()
        _precision(self.networks, spec, self.device)
        if self.info.ode_axes:
            self.options["ode"] = TimeParam.make(
                spec.sigma_t, spec.scaling, sigma_min=self.plan.sigma_min, sigma_max=self.plan.sigma_max
            )
        self.shape = sample_shape(denoiser)
        self.label_dim = int(getattr(denoiser, "label_dim", 0) or 0)
        # classifier guidance on an unconditional model: the classes are the classifier's, carried for it alone
        cls = None if self.guidance is None else self.guidance.classifier
        self.steered_classes = check_classifier(denoiser, cls) if cls is not None and not self.label_dim else 0
        self.calibration = calibration_seeds(spec.schedule)
        self.prior = start_prior(spec, self.plan, self.shape)

    def class_indices(self, class_labels: Any, n: int) -> torch.Tensor | None:
        """Integer class indices for n samples (a scalar fixes one class), checked against label_dim (for
        classifier guidance on an unconditional model: the classifier's classes, and a class is required)."""
        if self.steered_classes and class_labels is None:
            raise ConfigError(
                "classifier guidance on an unconditional model steers toward a class: give --class C "
                f"(0..{self.steered_classes - 1})"
            )
        return _class_indices(class_labels, n, self.label_dim or self.steered_classes)

    def check_seeds(self, seeds: Sequence[int]) -> None:
        """Refuse (ConfigError) seeds the schedule file was tuned on (its calibration seeds), naming the whole
        overlap as compressed ranges; callers pass the full seed list before the first batch."""
        check_not_calibration(self.calibration, seeds, self.spec.schedule)

    def run(
        self,
        seeds: Sequence[int],
        *,
        latents: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
    ) -> Batch:
        """Sample one batch; latents (standard normal) and class indices override the streams' draws.
        Raises ConfigError when a seed is one the schedule file was tuned on (its calibration seeds)."""
        self.check_seeds(seeds)
        dev, dtype, sig = self.device, self.spec.torch_dtype, self.plan.sigmas
        noise = (
            NoiseSource(seeds, device=dev)
            if self.spec.noise == "independent"
            else BrownianNoise(seeds, device=dev, sigma_min=self.plan.sigma_min, sigma_max=float(sig[0]))
        )
        x = initial_state(noise, self.plan, self.shape, dtype=dtype, latents=latents, prior=self.prior)
        labels = None
        if self.label_dim:
            labels = noise.labels(self.label_dim)  # drawn even when fixed, to keep streams aligned
            if class_labels is not None:
                labels = class_labels.to(dev)
        elif class_labels is not None:  # an unconditional network ignores them; the classifier and metrics read them
            labels = class_labels.to(dev)
        elif self.steered_classes:
            raise ConfigError("classifier guidance on an unconditional model steers toward a class: give --class C")
        combine = self.guidance.combine if self.guidance is not None and self.guidance.any_active else plain
        evaluator = Evaluator(self.networks, len(seeds), class_labels=labels, combine=combine)

        def step(info: StepInfo) -> None:
            if not torch.isfinite(info.x.sum()):  # one reduction: NaN and Inf reach the sum
                raise NonFiniteError(
                    f"non-finite value at step {info.i + 1}/{info.n} "
                    f"(sigma {info.sigma:.6g} -> {info.sigma_next:.6g}) for seeds "
                    f"{compact_seeds(list(seeds))}"
                )
            if on_step is not None:
                on_step(info)

        with torch.no_grad():
            x = self.info.fn(evaluator, x, sig.to(dev), noise=noise, callback=step, **self.options)
        if evaluator.nfe != self.plan.nfe or evaluator.counts != self.counts:
            raise RuntimeError(
                f"bug: {self.info.name} made {evaluator.nfe} evaluations per sample ({evaluator.counts} per network), "
                f"the plan says {self.plan.nfe}"
            )
        return Batch(
            images=x,
            seeds=list(seeds),
            class_labels=None if labels is None else labels.cpu(),
            nfe=self.plan.nfe,
            counts=evaluator.counts,
        )

    def resolved_options(self) -> dict[str, Any]:
        """Every option of the solver with the value that ran (defaults filled in: the variant, restart's
        parameters), plus the convergence order that holds for them on EDM's rho = 7 grid."""
        opts = {**self.info.defaults(), **self.spec.solver_options()}
        opts = {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in opts.items()}
        return {**opts, "convergence_order": self.info.convergence_order(opts)}

    def guidance_record(self) -> dict[str, Any] | None:
        """The guidance that ran (None without --guidance): weight, reference, interval, NFE convention."""
        g = self.guidance
        if g is None:
            return None
        hi: float | str = "inf" if math.isinf(g.hi) else g.hi
        record: dict[str, Any] = {"weight": g.weight, "guide": g.guide, "interval": [g.lo, hi]}
        if g.guide != NULL:
            record["guide_model"] = model_info(load_guide(g.guide))
        if g.classifier is not None:
            from diffbench.models.noisy_classifier import load_classifier

            record["classifier_weight"] = g.classifier_weight
            record["classifier"] = load_classifier(g.classifier).info()
        record["nfe_convention"] = NFE_CONVENTION
        return record

    def provenance(self, seeds: Sequence[int]) -> dict[str, Any]:
        env = environment(self.device)
        env["generator_device"] = str(self.device)
        return {
            "environment": env,
            "model": model_info(self.denoiser),
            "spec": resolved_spec(self.spec),
            "solver_options": self.resolved_options(),
            "plan": self.plan.to_dict(),
            "nfe_counted": self.plan.nfe,
            "nfe_per_network": dict(self.counts),
            "guidance": self.guidance_record(),
            "prior": None if self.prior is None else {"spec": self.spec.prior, **self.prior.describe()},
            "seeds": compact_seeds(list(seeds)),
            "num_images": len(seeds),
            "dtype": self.spec.dtype,
            "network": self.network_record(),
        }

    def network_record(self) -> dict[str, Any]:
        """The network's precision as it ran: net dtype, autocast, channels_last, compilation, TF32 (CUDA)."""
        from diffbench.sampling.precision import FastNetwork

        main = self.networks[MAIN]
        record: dict[str, Any] = (
            main.record if isinstance(main, FastNetwork) else {"net_dtype": "native", "compile": "off"}
        )
        if self.device.type == "cuda":
            record["tf32"] = bool(self.spec.tf32)
        return record


def _precision(nets: dict[str, Any], spec: SamplerSpec, device: torch.device) -> None:
    """Wrap the networks for --net-dtype / --compile in place and set TF32 (sampling/precision.py)."""
    from diffbench.sampling.precision import check_tf32, set_tf32, wrap_networks

    check_tf32(device, bool(spec.tf32))
    set_tf32(device, bool(spec.tf32))
    nets.update(wrap_networks(nets, device=device, net_dtype=spec.net_dtype, compile=bool(spec.compile)))


def calibration_seeds(schedule: str) -> frozenset[int]:
    """The calibration seeds a `file:` grid (.json, diffbench tune-schedule) was tuned on; empty otherwise."""
    if not str(schedule).startswith("file:"):
        return frozenset()
    from pathlib import Path

    from diffbench.sampling.schedules import grid_file_info
    from diffbench.seeds import parse_seeds

    path = Path(str(schedule)[5:])
    if not path.is_file():
        return frozenset()
    text = grid_file_info(path).get("calibration_seeds")
    return frozenset(parse_seeds(str(text))) if text else frozenset()


def check_not_calibration(calibration: frozenset[int], seeds: Sequence[int], schedule: str) -> None:
    """Evaluation seeds are never the calibration seeds a tuned grid (`file:` schedule) was made on: one
    ConfigError line naming the overlap."""
    if calibration and not calibration.isdisjoint(seeds):
        both = compact_seeds(sorted(calibration.intersection(seeds)))
        raise ConfigError(
            f"seeds {both} were the calibration seeds of the grid {str(schedule)[5:]}; "
            "evaluate a tuned grid on other seeds"
        )


def start_prior(spec: SamplerSpec, p: Plan, shape: Sequence[int]) -> Any:
    """The auxiliary prior of `spec.prior` (None: the N(0, sigma_max^2 I) start), checked against the plan and the
    model: a fitted prior must be at the sigma the plan starts at, and of the model's sample shape."""
    if spec.prior is None:
        return None
    from diffbench.priors import resolve_prior

    prior = resolve_prior(spec.prior)
    if tuple(prior.shape) != tuple(int(s) for s in shape):
        raise ConfigError(
            f"--prior {spec.prior}: a prior of images {list(prior.shape)}, but the model makes {list(shape)}"
        )
    if prior.sigma is not None and not math.isclose(p.sigma_first, prior.sigma, rel_tol=1e-9):
        if spec.schedule.startswith("file:"):  # its sigmas are fixed: --sigma-max does not apply
            raise ConfigError(
                f"--prior {spec.prior} is a prior at sigma {prior.sigma:g}, but the file grid {spec.schedule[5:]} "
                f"starts at sigma {p.sigma_first:g}: use a grid that starts at {prior.sigma:g}"
            )
        raise ConfigError(
            f"--prior {spec.prior} is a prior at sigma {prior.sigma:g}, but the plan starts at sigma "
            f"{p.sigma_first:g}: give --sigma-max {prior.sigma:g} with a schedule that starts there"
        )
    return prior


def _inputs(seeds: Sequence[int] | None, latents: torch.Tensor | None) -> list[int]:
    if seeds is None:
        if latents is None:
            raise ConfigError("give seeds or latents")
        return list(range(latents.shape[0]))
    from diffbench.seeds import MAX_SEEDS

    if len(seeds) > MAX_SEEDS:  # before the list is built
        raise ConfigError(f"{len(seeds):,} seeds are more than the {MAX_SEEDS:,} one run accepts")
    seeds = [int(s) for s in seeds]
    if latents is not None and latents.shape[0] != len(seeds):
        raise ConfigError(f"{latents.shape[0]} latents for {len(seeds)} seeds")
    if not seeds:
        raise ConfigError("no seeds given")
    return seeds


def iter_batches(
    denoiser: Denoiser,
    *,
    seeds: Sequence[int] | None = None,
    latents: torch.Tensor | None = None,
    class_labels: Any = None,
    batch: int = 64,
    device: str | torch.device = "auto",
    progress: Callable[[Progress], None] | None = None,
    sampler: Sampler | None = None,
    fit: Any = None,
    **spec: Any,
) -> Iterator[Batch]:
    """Yield finished batches in seed order (edm2 style: a thin caller writes them as they come).

    fit: a sampling.autobatch.BatchFit (--batch auto): each batch is run in the parts that fit the device,
    halved on out-of-memory, and yielded whole (the same seeds, the same images)."""
    if fit is not None and latents is not None:
        raise ConfigError("--batch auto samples from seeds; give a fixed batch size with latents")
    if batch < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch}")
    run = sampler or Sampler(denoiser, SamplerSpec.make(**spec), device=device)
    seeds = _inputs(seeds, latents)
    run.check_seeds(seeds)  # the whole overlap with a tuned grid's calibration seeds, before the first batch
    labels = run.class_indices(class_labels, len(seeds))
    chunks = [range(i, min(i + batch, len(seeds))) for i in range(0, len(seeds), batch)]
    for b, idx in enumerate(chunks):

        def on_step(info: StepInfo, b: int = b, done: int = idx.start) -> None:
            if progress is not None:
                progress(Progress(b, len(chunks), info.i + 1, info.n, done, len(seeds)))

        part_labels = None if labels is None else labels[idx.start : idx.stop]
        if fit is not None:
            out = fit.run(partial(run.run, on_step=on_step), [seeds[i] for i in idx], part_labels)
        else:
            out = run.run(
                [seeds[i] for i in idx],
                latents=None if latents is None else latents[idx.start : idx.stop],
                class_labels=part_labels,
                on_step=on_step,
            )
        if progress is not None:
            progress(Progress(b, len(chunks), run.plan.steps, run.plan.steps, idx.stop, len(seeds)))
        yield out


def sample(
    denoiser: Denoiser,
    *,
    seeds: Sequence[int] | None = None,
    latents: torch.Tensor | None = None,
    class_labels: Any = None,
    solver: str = "heun",
    schedule: str = "edm",
    nfe: int | None = None,
    steps: int | None = None,
    batch: int = 64,
    device: str | torch.device = "auto",
    progress: Callable[[Progress], None] | None = None,
    **options: Any,
) -> Samples:
    """Sample images with any solver/schedule at an exact NFE budget (options: SamplerSpec's fields)."""
    run = Sampler(
        denoiser,
        SamplerSpec.make(solver=solver, schedule=schedule, nfe=nfe, steps=steps, **options),
        device=device,
    )
    seed_list = _inputs(seeds, latents)
    parts = list(
        iter_batches(
            denoiser,
            seeds=seed_list,
            latents=latents,
            class_labels=class_labels,
            batch=batch,
            progress=progress,
            sampler=run,
        )
    )
    given = [p.class_labels for p in parts if p.class_labels is not None]
    labels = torch.cat(given) if given else None
    return Samples(
        images=torch.cat([p.images for p in parts]),
        nfe=run.plan.nfe,
        sigmas=run.plan.sigmas,
        seeds=seed_list,
        class_labels=labels,
        plan=run.plan,
        provenance=run.provenance(seed_list),
    )
