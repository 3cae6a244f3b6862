"""The error decomposed, per cell: `diffbench report STORE --errors`.

For each finished cell that measured `ref-fd` beside its FD (`fd` or `fid`): FD(cell), FD(reference ODE
solution from the same latents), their difference, the discretisation's share of the cell's FD, with its
paired 95% jackknife interval (both FDs are taken on the same seed blocks), the cell's `ref-error` (RMS to that
reference) and its `prior-kl` where measured. What FD(reference) holds beyond the data's own floor is the
network's (training) error and the prior's (the whole error as training plus sampling: Wang, He & Tao 2024,
arXiv 2406.12839); the training error of each model is measured on held-out images by `training_error`, the
same numbers as `diffbench score-error`.

A stochastic sampler has no gap: the reference ODE solution is not its limit (ref-fd and ref-error are not
applicable there, and the row says so).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from diffbench.errors import ConfigError
from diffbench.sweep.report import paired_jackknife, reading, result_of

FD_METRICS = ("fd", "fid")  # the cell's own Fréchet distance, in the space ref-fd was taken in
NOT_APPLICABLE = "n/a (stochastic sampler)"


@dataclass(frozen=True)
class Value:
    """A value with its 95% interval (None without one)."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None


@dataclass(frozen=True)
class ErrorRow:
    """One cell: FD, FD(reference), the gap FD − FD(reference) (None with `note` where not applicable),
    ref-error and prior-kl (None where not measured)."""

    model: str
    config: str
    nfe: int | None  # requested
    nfe_spent: int | None
    fd: Value
    ref_fd: Value | None
    gap: Value | None
    ref_error: Value | None
    prior_kl: Value | None
    note: str | None = None


def _value(result: Mapping[str, Any] | None) -> Value | None:
    if result is None or result.get("value") is None:
        return None
    r = reading(result)
    assert r.value is not None
    return Value(float(r.value), r.ci_low, r.ci_high)


def fd_metric(cells: Sequence[Mapping[str, Any]]) -> str | None:
    """The FD metric the cells with ref-fd carry (fd in a named space, else fid), or None."""
    for m in FD_METRICS:
        if any(result_of(c, m) is not None and result_of(c, "ref-fd") is not None for c in cells):
            return m
    return None


def error_rows(cells: Sequence[Mapping[str, Any]]) -> tuple[list[ErrorRow], int]:
    """(rows by model, configuration and NFE; how many finished cells were left out for lack of ref-fd or an FD).

    Raises ConfigError when no finished cell has both (the sweep did not ask for them)."""
    done = [c for c in cells if c.get("status") == "done"]
    metric = fd_metric(done)
    if metric is None:
        have = sorted({m for c in done for m in (c.get("results") or {})})
        raise ConfigError(
            "--errors needs cells that measured ref-fd beside fd (or fid); this store has "
            f"{', '.join(have) or 'no metrics'}: sweep with --metric fd,ref-fd,ref-error (and prior-kl)"
        )
    rows: list[ErrorRow] = []
    for c in done:
        fd, ref = result_of(c, metric), result_of(c, "ref-fd")
        if fd is None or fd.get("value") is None or ref is None:
            continue
        here, there = _value(fd), _value(ref)
        assert here is not None
        gap, note = None, None
        if there is None:
            note = NOT_APPLICABLE if "deterministic" in str(ref.get("note", "")) else str(ref.get("note") or "")
        else:
            a, b = reading(fd), reading(ref)
            if a.loo is not None and b.loo is not None and len(a.loo) == len(b.loo) >= 2:
                d, lo, hi = paired_jackknife(here.value, a.loo, there.value, b.loo)
                gap = Value(d, lo, hi)
            else:
                gap = Value(here.value - there.value)
        prov = c.get("provenance") or {}
        rows.append(
            ErrorRow(
                model=str(prov.get("model_name") or prov.get("model") or "?"),
                config=str(c.get("config")),
                nfe=c.get("nfe_requested") if c.get("nfe_requested") is not None else c.get("nfe"),
                nfe_spent=c.get("nfe"),
                fd=here,
                ref_fd=there,
                gap=gap,
                ref_error=_value(result_of(c, "ref-error")),
                prior_kl=_value(result_of(c, "prior-kl")),
                note=note,
            )
        )
    rows.sort(key=lambda r: (r.model, r.config, r.nfe if r.nfe is not None else -1))  # stable: store order
    return rows, len(done) - len(rows)


def models_of(cells: Sequence[Mapping[str, Any]]) -> dict[str, str | None]:
    """{model name: sha256} of the finished cells, in first-seen order."""
    out: dict[str, str | None] = {}
    for c in cells:
        prov = c.get("provenance") or {}
        name = prov.get("model_name")
        if c.get("status") == "done" and name and name not in out:
            out[str(name)] = prov.get("model_sha256")
    return out


def training_error(
    name: str,
    sha256: str | None,
    images: Any,
    *,
    source: str,
    device: Any = "cpu",
    offline: bool = False,
    levels: int = 13,
    repeats: int = 4,
    seed: int = 0,
) -> Any:
    """The held-out denoising loss of the model a store's cells ran (diffbench.metrics.score_error), with the
    defaults of `diffbench score-error` (13 levels over [max(σ_min, 0.002), min(σ_max, 80)], 4 draws, seed 0).

    The model is loaded by the name its cells recorded; one whose sha256 differs from theirs is refused
    (ConfigError): it would not be the network the cells measured. Returns a ScoreErrorResult."""
    from diffbench.metrics.score_error import default_levels, score_error
    from diffbench.models.load import load
    from diffbench.sweep.bench import model_sha256

    model = load(name, device="cpu", offline=offline)
    if sha256 is not None and model_sha256(model) != sha256:
        raise ConfigError(f"{name} now loads another network than the store's cells ran (sha256 differs)")
    lo, hi = max(float(model.sigma_min), 0.002), min(float(model.sigma_max), 80.0)
    return score_error(
        model, images, sigmas=default_levels(lo, hi, levels), repeats=repeats, seed=seed, device=device, source=source
    )


# ---- rendering ---------------------------------------------------------------------------------------------

HEADERS = ("model", "config", "NFE", "FD", "FD(reference)", "gap FD − FD(ref)", "ref-error", "prior-kl")


def show(v: Value | None, *, digits: int = 4, interval: bool = True) -> str:
    """'12.34 [10.1, 14.5]'; '—' for None."""
    if v is None:
        return "—"
    text = f"{v.value:.{digits}g}"
    if interval and v.ci_low is not None and v.ci_high is not None and math.isfinite(v.ci_low):
        text += f" [{v.ci_low:.3g}, {v.ci_high:.3g}]"
    return text


def _nfe(r: ErrorRow) -> str:
    return str(r.nfe) + (f" (spent {r.nfe_spent})" if r.nfe_spent is not None and r.nfe_spent != r.nfe else "")


def cells_text(r: ErrorRow) -> list[str]:
    """The row's columns as text (HEADERS order)."""
    gap = show(r.gap) if r.gap is not None else (r.note or "—")
    return [r.model, r.config, _nfe(r), show(r.fd), show(r.ref_fd), gap, show(r.ref_error), show(r.prior_kl)]


def caption(metric: str) -> str:
    """What the table shows, one paragraph."""
    return (
        f"The error decomposed per cell: {metric} of the samples, {metric} of the reference ODE solution from the "
        "same latents (ref-fd), their gap (the discretisation's share; 95% paired jackknife interval over the "
        "seed blocks), ref-error (RMS to that reference) and prior-kl (nats) where measured. FD(reference) "
        "holds the training and prior errors; the training error itself: --score-data. No gap for a stochastic "
        "sampler: the ODE is not its limit."
    )


def to_markdown(rows: Sequence[ErrorRow], metric: str) -> str:
    """A markdown table with its caption."""
    lines = [caption(metric), "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cells_text(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[ErrorRow], metric: str) -> str:
    """One line per cell: values and interval bounds as numbers."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ("fd", "ref_fd", "gap", "ref_error", "prior_kl")
    w.writerow(["model", "config", "nfe", "nfe_spent"] + [f"{c}{s}" for c in cols for s in ("", "_low", "_high")])
    for r in rows:
        vals: list[Any] = [r.model, r.config, r.nfe, r.nfe_spent]
        for c in cols:
            v = getattr(r, c)
            vals += ["", "", ""] if v is None else [v.value, v.ci_low, v.ci_high]
        w.writerow(["" if x is None else x for x in vals])
    return buf.getvalue()


def to_json(rows: Sequence[ErrorRow], metric: str) -> str:
    """{"metric": ..., "rows": [...]} (None where not measured or not applicable)."""
    return json.dumps({"metric": metric, "rows": [asdict(r) for r in rows]}, indent=1) + "\n"


RENDER = {"md": to_markdown, "csv": to_csv, "json": to_json}
