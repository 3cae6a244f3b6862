"""Reference-solution error: RMS distance of a deterministic sampler's output to an accurate ODE solve.

Only the reference side lives here, with the registered metric `ref-error` (its accumulator and value);
drawing each seed's latents and running the sampler is the cell runner's job (diffbench.sweep.cell), and
the single-cell API is diffbench.sweep.single_cell.reference_error.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffbench.errors import ConfigError

SCIPY_RTOL = 1e-10


@dataclass(frozen=True)
class ReferenceErrorResult:
    """RMS over all samples and dimensions of (x − x_ref), the largest per-sample RMS, with n and NFE."""

    rms: float
    max_rms: float  # largest per-sample RMS
    n: int
    nfe: int
    solver: str
    reference: str  # how x_ref was computed
    sigma_from: float
    sigma_to: float  # last positive sigma of the grid; a final step to 0 is applied to both sides
    cached: int  # samples whose reference came from the cache

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dict(self.__dict__)


def reference_home() -> Path:
    """Cache folder: $DIFFBENCH_HOME/reference, default ~/.cache/diffbench/reference."""
    home = os.environ.get("DIFFBENCH_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "diffbench") / "reference"


def model_fingerprint(denoiser: Any) -> str:
    """sha256 of a model's class, spec string and every parameter and buffer."""
    h = hashlib.sha256(type(denoiser).__qualname__.encode())
    h.update(str(getattr(denoiser, "spec", "")).encode())
    if isinstance(denoiser, torch.nn.Module):
        for name, t in sorted(denoiser.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def is_analytic(denoiser: Any) -> bool:
    """True for the analytic models, whose ODE scipy can solve to tight tolerance."""
    from diffbench.models.analytic import FiniteDataset, GaussianMixture

    return isinstance(denoiser, GaussianMixture | FiniteDataset)


def heun_reference(
    denoiser: Any,
    x: torch.Tensor,
    *,
    sigma_from: float,
    sigma_to: float,
    class_labels: torch.Tensor | None,
    steps: int,
    rho: float = 7.0,
) -> torch.Tensor:
    """A long deterministic Heun run (EDM Alg. 1) on a ρ=7 grid from sigma_from to sigma_to > 0, float64."""
    i = torch.arange(steps + 1, dtype=torch.float64)
    # EDM Eq. 5: σ_i = (σmax^(1/ρ) + i/N (σmin^(1/ρ) − σmax^(1/ρ)))^ρ
    sig = (sigma_from ** (1 / rho) + i / steps * (sigma_to ** (1 / rho) - sigma_from ** (1 / rho))) ** rho
    x = x.to(torch.float64)
    b = x.shape[0]

    def d(xx: torch.Tensor, s: float) -> torch.Tensor:
        sigma = torch.full((b,), s, dtype=torch.float64, device=xx.device)
        return (xx - denoiser(xx, sigma, class_labels).to(torch.float64)) / s  # EDM Eq. 3: dx/dσ = (x − D)/σ

    with torch.no_grad():
        for s, t in zip(sig[:-1].tolist(), sig[1:].tolist(), strict=True):
            d0 = d(x, s)
            x1 = x + (t - s) * d0
            x = x + (t - s) * 0.5 * (d0 + d(x1, t))
    return x


def _one_hot(labels: torch.Tensor | None, label_dim: int, device: Any) -> torch.Tensor | None:
    if labels is None or not label_dim:
        return None
    return torch.eye(label_dim, dtype=torch.float64, device=device)[labels.to(device)]


def _cache_key(
    *,
    model: str,
    start: torch.Tensor,
    labels: Any,
    sigma_from: float,
    sigma_to: float,
    final: bool,
    method: str,
) -> str:
    h = hashlib.sha256(model.encode())
    h.update(start.detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
    h.update(b"none" if labels is None else labels.cpu().to(torch.int64).numpy().tobytes())
    h.update(f"{sigma_from!r}|{sigma_to!r}|{final}|{method}".encode())
    return h.hexdigest()[:40]


def reference_samples(
    denoiser: Any,
    x0: torch.Tensor,
    *,
    sigma_from: float,
    sigma_to: float,
    final: bool,
    class_labels: torch.Tensor | None = None,
    fingerprint: str | None = None,
    ref_steps: int = 1024,
    cache: bool = True,
) -> tuple[torch.Tensor, str, bool]:
    """Accurate ODE solutions, float64 on the CPU, from the sampler's own start x_0 [B, ...] at σ_from to sigma_to.

    x0 is the sampler's initial_state (x_0 = z σ_from for the Gaussian start, REFERENCE §1). scipy's adaptive
    solve for the analytic models, a long Heun run otherwise; with `final` the step to σ = 0 (x = D(x; sigma_to))
    is applied as a sampler's last step would. class_labels are integer indices [B] or None. Returns
    (x_ref [B, ...], method, whether it came from the cache under $DIFFBENCH_HOME/reference).
    """
    from diffbench.models.analytic import reference_solution

    analytic = is_analytic(denoiser)
    method = f"scipy DOP853 rtol={SCIPY_RTOL:g}" if analytic else f"heun {ref_steps} steps, rho 7"
    key = _cache_key(
        model=fingerprint or model_fingerprint(denoiser),
        start=x0,
        labels=class_labels,
        sigma_from=sigma_from,
        sigma_to=sigma_to,
        final=final,
        method=method,
    )
    path = reference_home() / f"{key}.pt"
    if cache and path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True), method, True
    device = x0.device
    onehot = _one_hot(class_labels, int(getattr(denoiser, "label_dim", 0) or 0), device)
    x0 = x0.to(torch.float64)
    if analytic:
        ref = reference_solution(
            denoiser,
            x0.cpu(),
            sigma_from=sigma_from,
            sigma_to=sigma_to,
            class_labels=None if onehot is None else onehot.cpu(),
            rtol=SCIPY_RTOL,
            atol=SCIPY_RTOL,
        )
    else:
        ref = heun_reference(
            denoiser, x0, sigma_from=sigma_from, sigma_to=sigma_to, class_labels=onehot, steps=ref_steps
        )
    if final:  # the last step to σ = 0 is x = D(x; σ_last) on both sides
        s = torch.full((x0.shape[0],), sigma_to, dtype=torch.float64, device=device)
        with torch.no_grad():
            ref = denoiser(ref.to(device), s, onehot).to(torch.float64)
    ref = ref.cpu()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two runs may fill the cache at once
        torch.save(ref, tmp)
        os.replace(tmp, path)
    return ref, method, False


def squared_errors(samples: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over all dimensions, float64 [B]; RMS = sqrt of their mean."""
    if samples.shape != reference.shape:
        raise ConfigError(f"samples {list(samples.shape)} and reference {list(reference.shape)} differ in shape")
    diff = samples.detach().to(torch.float64).cpu() - reference.to(torch.float64).cpu()
    return diff.flatten(1).pow(2).mean(1)


# ---- ref-error as a registered metric (diffbench.metrics.registry) -------------------------------------
# The sampler side (the latents of each seed, the plan's sigma range, the sampler's own denoiser) lives in
# the sweep's cell runner, which calls reference_samples and squared_errors per batch and hands the
# per-sample errors over on the batch (batch.ref_sq_errors); this side accumulates and finishes them.


def _ref_error_value(states: Sequence[Any], ctx: Any) -> tuple[float, dict[str, Any]]:
    """RMS over the union of the blocks; the largest per-sample RMS, cache hits and the reference's method."""
    from diffbench.metrics.accumulators import as_float, merge_sums

    total = merge_sums(list(states))
    extras = {"max_rms": as_float(total.max_rms), "cached": total.cached, "reference": ctx.meta.get("ref_method")}
    return total.rms, extras


def _add_errors(acc: Any, batch: Any) -> None:
    assert batch.ref_sq_errors is not None
    acc.add(batch.ref_sq_errors, batch.ref_cached)


def _ref_error_options(ctx: Any) -> dict[str, Any]:
    return {} if is_analytic(ctx.model) else {"ref_steps": ctx.options["ref_steps"]}


def _register() -> None:
    from diffbench.metrics.accumulators import SumsAcc
    from diffbench.metrics.registry import Metric, State, register_metric

    register_metric(
        Metric(
            "ref-error",
            "lower",
            ("reference",),
            "RMS distance to the reference ODE solution, same latents",
            State("ref_error", lambda ctx: SumsAcc(), _add_errors),
            _ref_error_value,
            options=_ref_error_options,
        )
    )


_register()
