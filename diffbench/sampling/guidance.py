"""Guidance as a combine rule of the evaluator: D = D_ref + w (D_main - D_ref), its cost per evaluation, and the
checks of the guiding model and the sigma interval (REFERENCE §8; EDM2's convention, w = 1 is no guidance).

NFE convention: an evaluation where guidance acts (w != 1 and LO < sigma <= HI) costs 2 network evaluations per
sample (the main network and the reference, which is the same network with the null label or another model);
elsewhere it costs 1 (the main network alone). Classifier guidance (--classifier-guidance W, W != 0) adds the
classifier's forward and backward pass at every evaluation with sigma > 0, counted as 1 classifier evaluation
(its own line, "classifier", in the per-network counts) and spent from the same --nfe budget. Budgets are met
exactly under these costs (plan(cost=...)).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from diffbench.denoiser import MAIN, Denoiser, NetworkCall, sample_shape
from diffbench.errors import ConfigError

if TYPE_CHECKING:
    from diffbench.sampling.spec import SamplerSpec

NULL = "null"  # --guide null: D_ref is the main network given the null label
NULL_NET = "null"  # the evaluator's name for the main network called with the null label
GUIDE_NET = "guide"  # the evaluator's name for a separate guiding model
CLASSIFIER_NET = "classifier"  # the evaluator's name for the classifier's gradient (classifier guidance)
NFE_CONVENTION = (
    "a guided evaluation (w != 1 and LO < sigma <= HI) costs 2 network evaluations per sample (main + reference); "
    "an evaluation outside the guidance interval or at w = 1 costs 1; classifier guidance (W != 0) adds 1 per "
    "evaluation at sigma > 0 (the classifier's forward + backward pass, counted as one classifier evaluation on "
    "its own line); --nfe budgets count every network, denoiser and classifier, and are met exactly under these "
    "costs; the per-network counts are stored; --steps fixes the step count instead"
)


def parse_interval(text: str) -> tuple[float, float]:
    """'LO,HI' or 'LO:HI' (the form a sweep list needs) -> (lo, hi) with 0 <= lo < hi; one line when not."""
    parts = str(text).replace(":", ",").split(",")
    try:
        lo, hi = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        lo = hi = math.nan
    if math.isnan(lo) or math.isnan(hi):
        raise ConfigError(
            f"--guidance-interval '{text}' is not LO,HI (two numbers; in a sweep list write LO:HI, e.g. 0.28:5.42)"
        )
    if not (0 <= lo < hi):
        raise ConfigError(f"--guidance-interval {lo:g},{hi:g}: needs 0 <= LO < HI (guidance where LO < sigma <= HI)")
    return lo, hi


@dataclass(frozen=True)
class Guidance:
    """One guidance setting on one model: weight w, reference (null label or a model), sigma interval (lo, hi]."""

    weight: float
    guide: str = NULL
    lo: float = 0.0
    hi: float = math.inf
    classifier_weight: float = 0.0  # classifier guidance scale (Dhariwal & Nichol's s; 0 = none)
    classifier: str | None = None  # the noise-conditional classifier's spec

    @property
    def active(self) -> bool:
        """w = 1 is no guidance by a reference: every evaluation is the main network alone."""
        return self.weight != 1

    @property
    def classifier_active(self) -> bool:
        """Classifier guidance with a weight != 0."""
        return self.classifier is not None and self.classifier_weight != 0

    @property
    def any_active(self) -> bool:
        """Either kind of guidance acts somewhere (else plain sampling at cost 1)."""
        return self.active or self.classifier_active

    def inside(self, sigma: float) -> bool:
        """Guidance acts at sigma: w != 1 and lo < sigma <= hi (Kynkäänniemi et al. 2024, an interval in sigma)."""
        return self.active and self.lo < sigma <= self.hi

    def classifier_inside(self, sigma: float) -> bool:
        """Classifier guidance acts at sigma: W != 0 and sigma > 0 (its term sigma^2 grad vanishes at 0)."""
        return self.classifier_active and sigma > 0

    def cost(self, sigma: float) -> int:
        """Network evaluations per sample of one evaluation at sigma: 2 guided, else 1; +1 for the classifier's
        forward + backward pass where classifier guidance acts."""
        return (2 if self.inside(sigma) else 1) + (1 if self.classifier_inside(sigma) else 0)

    def combine(self, net: NetworkCall, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """One guided evaluation D = D_ref + w (D_main - D_ref) (Ho & Salimans 2022, eq. 6, in EDM2's form;
        Karras et al. 2024, eq. 1, with D_ref a weaker model); plain D_main outside the interval."""
        d_main = net(MAIN, x, sigma)
        level = float(sigma[0])
        if bool((sigma != sigma[0]).any()):  # solvers evaluate a batch at one level; a mixed one has no one cost
            raise RuntimeError("bug: guidance got a batch at several sigmas")
        d = d_main
        if self.inside(level):
            if self.guide == NULL:
                d_ref = net(NULL_NET, x, sigma, labels=None)
            else:
                d_ref = net(GUIDE_NET, x, sigma)  # the same (bound) label when the guiding model is conditional
            d = d_ref + self.weight * (d_main - d_ref)
        if self.classifier_inside(level):
            # Dhariwal & Nichol 2021, Sec. 4.1 (score + s grad log p(c | x)), in EDM's denoiser form: the score is
            # (D - x) / sigma^2 (Karras et al. 2022, eq. 3), so D' = D + s sigma^2 grad_x log p(c | x, sigma)
            grad = net(CLASSIFIER_NET, x, sigma)
            d = d + self.classifier_weight * level**2 * grad
        return d


@functools.lru_cache(maxsize=4)
def load_guide(name: str) -> Denoiser:
    """The guiding model `name`, loaded once per process (on the CPU; the sampler moves it)."""
    from diffbench.models.load import load

    model = load(name, device="cpu")
    if isinstance(model, torch.nn.Module):
        model.eval()
    return model


def guidance_for(model: Denoiser, spec: SamplerSpec) -> Guidance | None:
    """The spec's guidance on this model, checked (None without --guidance): the reference must exist (a
    conditional model for the null label, else --guide MODEL) and match the model's samples and classes, and
    the interval must read LO,HI (run.plan_spec checks it against the run's sigma range). Raises ConfigError."""
    if spec.guidance is None and spec.classifier_guidance is None:
        return None
    label_dim = int(getattr(model, "label_dim", 0) or 0)
    classifier_weight = float(spec.classifier_guidance or 0.0)
    if spec.classifier_guidance is not None:
        check_classifier(model, str(spec.classifier))
    if spec.guidance is None:
        return Guidance(weight=1.0, classifier_weight=classifier_weight, classifier=spec.classifier)
    guide = spec.guide or NULL
    if guide == NULL and not label_dim:
        raise ConfigError(
            "--guidance needs a reference: the model is unconditional, so there is no null label to guide against; "
            "give --guide MODEL (an unconditional or weaker version of it) or use a conditional model"
        )
    if guide != NULL:
        check_guide(model, guide, load_guide(guide))
    lo, hi = (0.0, math.inf) if spec.guidance_interval is None else parse_interval(spec.guidance_interval)
    return Guidance(
        weight=float(spec.guidance),
        guide=guide,
        lo=lo,
        hi=hi,
        classifier_weight=classifier_weight,
        classifier=spec.classifier if spec.classifier_guidance is not None else None,
    )


def check_classifier(model: Denoiser, name: str) -> int:
    """Classifier guidance needs a classifier that reads the model's samples with sigma and returns logits over
    its classes (one trial call on a zero sample checks it); returns the number of classes K. On a conditional
    model K must be its label count (the intended class is its label); an unconditional model ignores labels and
    is steered toward a fixed class (--class C < K) by the classifier alone (Dhariwal & Nichol 2021, Sec. 4).
    Raises ConfigError / ModelLoadError (one line)."""
    from diffbench.models.noisy_classifier import load_classifier

    label_dim = int(getattr(model, "label_dim", 0) or 0)
    loaded = load_classifier(name)
    if label_dim and loaded.num_classes is not None and loaded.num_classes != label_dim:
        raise ConfigError(f"classifier {name} has {loaded.num_classes} classes, the model {label_dim}")
    shape = sample_shape(model)
    params = list(loaded.module.parameters()) if isinstance(loaded.module, torch.nn.Module) else []
    dev = params[0].device if params else torch.device("cpu")  # a sampler may have moved the cached module
    try:
        with torch.no_grad():
            logits = loaded.module(torch.zeros((1, *shape), device=dev), torch.ones(1, device=dev))
    except Exception as exc:  # the user's classifier cannot read these samples
        raise ConfigError(
            f"classifier {name} fails on samples of shape {list(shape)} with sigma: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
        ) from None
    want = label_dim or (loaded.num_classes if loaded.num_classes else None)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != 1 or logits.shape[1] < 2:
        got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"classifier {name} returned {got} for one sample; expected logits [1, {want or 'K'}]")
    if want is not None and logits.shape[1] != want:
        got = list(logits.shape)
        raise ConfigError(f"classifier {name} returned {got} for one sample; expected logits [1, {want}]")
    return int(logits.shape[1])


def check_guide(model: Denoiser, name: str, guide: Denoiser) -> None:
    """A guiding model must make samples of the model's shape and take its labels (or none)."""
    main_shape, guide_shape = sample_shape(model), sample_shape(guide)
    if main_shape != guide_shape:
        raise ConfigError(
            f"guiding model {name} makes samples of shape {list(guide_shape)} (channels, resolution), "
            f"the model {list(main_shape)}"
        )
    main_dim = int(getattr(model, "label_dim", 0) or 0)
    guide_dim = int(getattr(guide, "label_dim", 0) or 0)
    if guide_dim and guide_dim != main_dim:
        raise ConfigError(f"guiding model {name} has {guide_dim} classes, the model {main_dim}")


def networks(model: Denoiser, guidance: Guidance | None) -> dict[str, Any]:
    """The evaluator's networks for a guidance setting: main, and the null-label alias or the guiding model."""
    nets: dict[str, Any] = {MAIN: model}
    if guidance is not None and guidance.active:
        if guidance.guide == NULL:
            nets[NULL_NET] = model
        else:
            nets[GUIDE_NET] = load_guide(guidance.guide)
    if guidance is not None and guidance.classifier_active:
        from diffbench.models.noisy_classifier import ClassifierGradient, load_classifier

        classes = check_classifier(model, str(guidance.classifier))  # the model's labels, or the classifier's
        nets[CLASSIFIER_NET] = ClassifierGradient(load_classifier(str(guidance.classifier)), classes)
    return nets
