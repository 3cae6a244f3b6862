"""`compare`: two stores or JSON exports cell by cell; a CI gate (exit 1 on a regression, 2 on bad input).

A cell regresses when its metric is worse (in that metric's direction) than the baseline's by more than the
tolerance and the 95% interval of new − baseline lies entirely on the worse side. Where both sides ran the
same seeds in the same blocks that interval is the paired jackknife of θ_new − θ_base over the shared blocks
(from the stored leave-one-out values; issue 20). A baseline cell whose sampler NEW ran on other seeds or
blocks is compared unpaired (the two jackknife SEs combined) and the row says so; a baseline stored before
the jackknife (no leave-one-out values) is compared on the tolerance alone, and the row says that too.

Each row's verdict is one of: ok (not worse), within tolerance (worse by no more than the tolerance), within
the interval (worse beyond the tolerance, but the interval reaches the better side), REGRESSION (beyond both:
the only verdict that fails, exit 1), or n/a (no value on one side).

Every baseline cell must be in NEW (matched by identity: everything that determines its numbers, or its
sampler run on other seeds or blocks, or with more metrics: an extended sweep that added a metric is compared
on the baseline's metrics, paired, where the shared metrics' options, extractor and reference files are
unchanged); one whose sampler NEW ran with another class, without one of its metrics or with other metric
options is an error, and so are stores of different models (one line naming both). NEW cells without a
baseline (an extended sweep) are listed and pass.

Across guidance (issue 21): a baseline cell with no NEW cell of its identity is matched to the NEW cell(s) that
differ from it only in guidance (`--guidance`, `--guide`, `--guidance-interval`, `--classifier-guidance`,
`--classifier`, the guiding files read, and so the sigma grid) and share everything else: seeds, blocks, class,
metrics and the counted NFE. Both ran the same latents, so the comparison is paired, and where both stored
inv-prob's per-seed log p(c|x) the comparison states the share of seeds whose p(c|x) rose and fell (Li & Jiao
2025: guidance lowers E[1/p] without raising every sample's p).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffbench.errors import DiffbenchError
from diffbench.sweep.report import paired_jackknife, reading, seed_shift, unpaired_jackknife
from diffbench.sweep.store import StoreError, load_cells


class CompareInputError(DiffbenchError):
    """Bad input to compare: a missing file, an unreadable one, cells that do not match. Exit code 2."""

    exit_code = 2


@dataclass(frozen=True)
class Tolerance:
    """Relative (2%) or absolute (0.05) allowance before a worse value counts."""

    value: float
    relative: bool

    def allowed(self, baseline: float) -> float:
        return self.value * abs(baseline) if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


def parse_tolerance(text: str) -> Tolerance:
    """'2%' -> relative 0.02; '0.05' -> absolute."""
    t = str(text).strip()
    try:
        if t.endswith("%"):
            v, rel = float(t[:-1]) / 100, True
        else:
            v, rel = float(t), False
    except ValueError:
        raise CompareInputError(f"--tolerance '{text}' is not a number or a percentage such as 2%") from None
    if not math.isfinite(v) or v < 0:
        raise CompareInputError(f"--tolerance must be >= 0, got '{text}'")
    return Tolerance(v, rel)


@dataclass(frozen=True)
class Row:
    """One metric of one cell on both sides."""

    config: str
    nfe: int | None
    metric: str
    better: str
    new: float | None
    baseline: float | None
    difference: float | None  # new − baseline
    ci_low: float | None  # paired interval of new − baseline over blocks
    ci_high: float | None
    worse: bool  # in the metric's direction
    regression: bool
    note: str = ""
    test: str = ""  # which interval: paired jackknife, unpaired (other seeds or blocks), or none
    verdict: str = ""  # ok, within tolerance, within the interval, REGRESSION or n/a (each row one of these)


@dataclass(frozen=True)
class Comparison:
    rows: list[Row]
    tolerance: Tolerance
    unmatched_new: tuple[str, ...] = ()  # labels of NEW cells without a baseline (they pass)
    unpaired: str = ""  # how NEW's run differs from the baseline's when some cells were compared unpaired
    across_guidance: tuple[str, ...] = ()  # 'NEW cell against baseline cell' for cells matched across guidance
    seed_shifts: tuple[str, ...] = ()  # per seed, p(c|x) of NEW against the baseline rose / fell (guidance pairs)
    more_metrics: str = ""  # baseline cells matched to NEW cells that measured more metrics (compared on theirs)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.regression]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0


def _nfe(c: dict[str, Any]) -> Any:
    return c.get("nfe_requested") if c.get("nfe_requested") is not None else c.get("nfe")


def _policy(c: dict[str, Any]) -> str:
    spec = (c.get("identity") or {}).get("spec") or {}
    return str(spec.get("nfe_policy") or "exact")


def _config(c: dict[str, Any]) -> str:
    """The configuration's label, naming a budget policy other than exact (older stores did not)."""
    cfg = str(c["config"])
    if _policy(c) != "exact" and "nfe-policy" not in cfg:
        cfg += f" nfe-policy={_policy(c)}"
    return cfg


def _label(c: dict[str, Any]) -> str:
    """'heun edm' at NFE 10; a cell that spent another NFE than it asked for (nfe_policy nearest/floor) says
    so, and its policy is named, so it never shares a label with the exact cell of the same configuration."""
    text = f"'{_config(c)}' at NFE {_nfe(c)}"
    if c.get("nfe") is not None and c.get("nfe") != _nfe(c):
        text += f" (spent {c.get('nfe')})"
    return text


_RUN_KEYS = {"seeds": "seeds", "blocks": "seed blocks", "class": "class", "metrics": "metrics"}
METRIC_FILES = ("reference", "kl-data")  # files_read roles that only the metrics read (identity.files_read)


def _sampler_key(c: dict[str, Any]) -> str:
    """What a cell's identity holds apart from how the sweep was run (seeds, blocks, class) and what it
    measured (metrics, their options, the feature extractor and the files only metrics read)."""
    skip = (*_RUN_KEYS, "metric_options", "extractor")
    ident = {k: v for k, v in (c.get("identity") or {}).items() if k not in skip}
    files = ident.get("files_read")
    if isinstance(files, dict):
        ident["files_read"] = {k: v for k, v in files.items() if k not in METRIC_FILES}
    return json.dumps(ident, sort_keys=True, default=str)


def _measures_as(n: dict[str, Any], b: dict[str, Any]) -> str:
    """'' when NEW cell n measured every metric of baseline cell b as b did (a superset of b's metrics, b's
    metric options, extractor and metric files unchanged); else how they differ, e.g. 'metrics [...] in NEW
    against [...] in the baseline'."""
    i_n, i_b = n.get("identity") or {}, b.get("identity") or {}
    mn, mb = list(i_n.get("metrics") or []), list(i_b.get("metrics") or [])
    if not set(mb) <= set(mn):
        return f"metrics {mn} in NEW against {mb} in the baseline"
    for key, what in (("metric_options", "metric options"), ("files_read", "metric files")):
        dn, db = i_n.get(key) or {}, i_b.get(key) or {}
        if key == "files_read":
            db = {k: v for k, v in db.items() if k in METRIC_FILES}
        changed = {k: v for k, v in db.items() if json.dumps(dn.get(k), default=str) != json.dumps(v, default=str)}
        if changed:
            shown = {k: dn.get(k) for k in changed}
            return f"{what} {shown} in NEW against {changed} in the baseline"
    if i_b.get("extractor") is not None and i_n.get("extractor") != i_b.get("extractor"):
        return f"extractor {i_n.get('extractor')} in NEW against {i_b.get('extractor')} in the baseline"
    return ""


def _run_of(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    idents = [c.get("identity") or {} for c in cells]
    return {k: sorted({json.dumps(i.get(k), default=str) for i in idents}) for k in _RUN_KEYS}


def _differs(
    new: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]], keys: Sequence[str] = tuple(_RUN_KEYS)
) -> str:
    """'seeds 0-59 against 0-29' for the run settings in which two sets of cells differ."""
    rn, rb = _run_of(new), _run_of(baseline)
    parts = []
    for k in keys:
        if rn[k] != rb[k]:
            show = lambda v: ", ".join(str(json.loads(x)) for x in v)  # noqa: E731
            parts.append(f"{_RUN_KEYS[k]} {show(rn[k])} in NEW against {show(rb[k])} in the baseline")
    return "; ".join(parts) or "other run settings"


def _model_of(c: dict[str, Any]) -> str | None:
    files = (c.get("identity") or {}).get("files_read") or {}
    return files.get("model") if isinstance(files, dict) else None


def _model_name(c: dict[str, Any]) -> str:
    name = (c.get("provenance") or {}).get("model_name")
    sha = _model_of(c) or "?"
    return f"{name} (sha256 {sha[:12]})" if name else f"sha256 {sha[:12]}"


def _check_models(new: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]]) -> None:
    """Stores of different models: one line naming both (their cells can never match)."""
    mn = {m: c for c in new if (m := _model_of(c)) is not None}
    mb = {m: c for c in baseline if (m := _model_of(c)) is not None}
    lost = [m for m in mb if m not in mn]
    if mn and lost:
        names = lambda cs: ", ".join(sorted({_model_name(c) for c in cs}))  # noqa: E731
        raise CompareInputError(
            f"NEW holds cells of model {names(mn.values())}, the baseline of model {names(mb[m] for m in lost)}: "
            "stores of different models cannot be compared cell by cell"
        )


GUIDANCE_SPEC = ("guidance", "guide", "guidance_interval", "classifier_guidance", "classifier")
GUIDANCE_FILES = ("guide", "classifier")  # files_read roles of a guiding model and a guidance classifier


def _guidance_key(c: dict[str, Any]) -> str:
    """A cell's identity without its guidance: the options, the guiding files and the sigma grid (which the
    guidance costs move at a fixed counted NFE). Equal keys: same seeds, blocks, class, metrics, counted NFE."""
    ident = dict(c.get("identity") or {})
    ident["spec"] = {k: v for k, v in (ident.get("spec") or {}).items() if k not in GUIDANCE_SPEC}
    ident["files_read"] = {k: v for k, v in (ident.get("files_read") or {}).items() if k not in GUIDANCE_FILES}
    ident.pop("sigmas", None)
    return json.dumps(ident, sort_keys=True, default=str)


def guidance_of(c: dict[str, Any]) -> str:
    """'guidance 3 (guide digits-edm-cond-early)', 'classifier-guidance 1 (classifier ...)' or 'no guidance'."""
    spec = (c.get("identity") or {}).get("spec") or {}
    parts = []
    if spec.get("guidance") is not None:
        extra = [f"guide {spec['guide']}"] if spec.get("guide") is not None else []
        extra += [f"interval {spec['guidance_interval']}"] if spec.get("guidance_interval") is not None else []
        parts.append(f"guidance {spec['guidance']:g}" + (f" ({', '.join(extra)})" if extra else ""))
    if spec.get("classifier_guidance") is not None:
        parts.append(f"classifier-guidance {spec['classifier_guidance']:g} (classifier {spec.get('classifier')})")
    return ", ".join(parts) or "no guidance"


def _some(labels: Sequence[str], n: int = 4) -> str:
    more = f"; and {len(labels) - n} more" if len(labels) > n else ""
    return "; ".join(labels[:n]) + more


def _load(path: str | os.PathLike, what: str) -> list[dict[str, Any]]:
    try:
        return load_cells(path, what=what)
    except StoreError as exc:
        raise CompareInputError(str(exc)) from None


def compare_cells(
    new: Sequence[dict[str, Any]],
    baseline: Sequence[dict[str, Any]],
    *,
    tolerance: Tolerance,
    metrics: Sequence[str] | None = None,
) -> Comparison:
    """Match cells by identity (what determines their numbers) and compare every shared metric.

    A baseline cell missing from NEW is an error (CompareInputError), and one whose sampler NEW ran with another
    class, without one of its metrics or with other metric options says so; NEW cells of its sampler on other
    seeds or blocks are compared unpaired (`unpaired`), ones that measured more metrics on the same seeds and
    blocks paired on the baseline's metrics (`more_metrics`). Stores of different models: CompareInputError
    naming both. NEW cells without a baseline are listed in `unmatched_new` and pass. A
    baseline cell whose identity NEW lacks is paired with the NEW cell(s) that differ from it only in guidance
    (listed in `across_guidance`; the per-seed rise/fall of p(c|x) in `seed_shifts` where inv-prob stored it).
    """
    bn = {c["id"]: c for c in new if c["status"] == "done"}
    bb = {c["id"]: c for c in baseline if c["status"] == "done"}
    if not bb:
        raise CompareInputError("the baseline holds no finished cells")
    _check_models(list(bn.values()), list(bb.values()))
    twin: dict[str, str] = {}  # baseline id -> NEW id of its sampler run on other seeds, blocks or more metrics
    missing = [c for i, c in bb.items() if i not in bn]
    unpaired_note = more_note = ""
    across: dict[str, list[dict[str, Any]]] = {}  # baseline id -> NEW cells differing from it only in guidance
    if missing:
        by_sampler: dict[str, list[dict[str, Any]]] = {}
        for c in bn.values():
            by_sampler.setdefault(_sampler_key(c), []).append(c)
        rerun = [c for c in missing if _sampler_key(c) in by_sampler]
        gone = [c for c in missing if _sampler_key(c) not in by_sampler]
        by_guidance: dict[str, list[dict[str, Any]]] = {}
        for c in bn.values():
            if c["id"] not in bb:
                by_guidance.setdefault(_guidance_key(c), []).append(c)
        for c in gone:
            if _guidance_key(c) in by_guidance:
                across[c["id"]] = by_guidance[_guidance_key(c)]
        gone = [c for c in gone if c["id"] not in across]
        other, why = [], {}
        for c in rerun:
            # the NEW cells of its sampler that measured its metrics as it did (more metrics are fine), same
            # class; those on the baseline's seeds and blocks first (paired)
            fits = [n for n in by_sampler[_sampler_key(c)] if _same_run(n, c, ("class",)) and not _measures_as(n, c)]
            fits.sort(key=lambda n: not _same_run(n, c, ("seeds", "blocks")))
            if fits:
                twin[c["id"]] = fits[0]["id"]
            else:
                other.append(c)
                n0 = by_sampler[_sampler_key(c)][0]
                why[c["id"]] = _measures_as(n0, c) if _same_run(n0, c, ("class",)) else _differs([n0], [c], ("class",))
        parts = []
        if other:
            reasons = sorted(set(why.values()))
            parts.append(
                f"{len(other)} baseline cell(s) were run differently in NEW ({_some(reasons, 2)}), so their "
                f"numbers are not comparable: {_some([_label(c) for c in other])}"
            )
        if gone:
            parts.append(f"{len(gone)} baseline cell(s) missing from NEW: {_some([_label(c) for c in gone])}")
        if parts:
            raise CompareInputError(". ".join(parts))
        moved = [c for c in rerun if not _same_run(bn[twin[c["id"]]], c, ("seeds", "blocks"))]
        if moved:
            unpaired_note = _differs([bn[twin[c["id"]]] for c in moved], moved, ("seeds", "blocks"))
        more = [c for c in rerun if c not in moved]
        if more:
            added = sorted({m for c in more for m in _metrics(bn[twin[c["id"]]]) if m not in _metrics(c)})
            more_note = f"{len(more)} baseline cell(s) matched to NEW cells of the same run" + (
                f" that also measured {', '.join(added)}" if added else ""
            )
    partners = {n["id"] for ns in across.values() for n in ns}
    unmatched = tuple(_label(c) for i, c in bn.items() if i not in bb and i not in twin.values() and i not in partners)
    rows: list[Row] = []
    pairs, shifts = [], []
    for cid, b in bb.items():
        for n in across.get(cid) or [bn[twin.get(cid, cid)]]:
            config = _config(b)
            if cid in across:
                config = _config(n) if _config(n) != config else config
                config += f" ({guidance_of(n)} vs {guidance_of(b)})"
                pairs.append(f"{_label(n)}, {guidance_of(n)}, against {_label(b)}, {guidance_of(b)}")
                shift = seed_shift(n, b)
                if shift is not None:
                    shifts.append(f"{config} at NFE {_nfe(b)}: {shift.describe('NEW', 'the baseline')}")
            rb, rn = b.get("results") or {}, n.get("results") or {}
            names = [m for m in rb if metrics is None or m in metrics]
            absent = [m for m in names if m not in rn]
            if absent:
                raise CompareInputError(f"metric {absent[0]} of baseline cell {_label(b)} is missing in NEW")
            for m in names:
                paired = _same_run(n, b, ("seeds", "blocks"))
                rows.append(_row(config, _nfe(b), m, rn[m], rb[m], tolerance, paired=paired))
    return Comparison(rows, tolerance, unmatched, unpaired_note, tuple(pairs), tuple(shifts), more_note)


def _metrics(c: dict[str, Any]) -> list[str]:
    return list((c.get("identity") or {}).get("metrics") or [])


def _same_run(a: dict[str, Any], b: dict[str, Any], keys: Sequence[str]) -> bool:
    ia, ib = a.get("identity") or {}, b.get("identity") or {}
    return all(json.dumps(ia.get(k), default=str) == json.dumps(ib.get(k), default=str) for k in keys)


def _row(
    config: str, nfe: Any, metric: str, xn: dict[str, Any], xb: dict[str, Any], tolerance: Tolerance, *, paired: bool
) -> Row:
    """One metric of one cell: worse beyond the tolerance, and the interval of new − baseline on the worse side."""
    better = xb.get("better", "lower")
    dn, db = reading(xn), reading(xb)
    vn, vb = dn.value, db.value
    if vb is None or vn is None:
        return Row(
            config, nfe, metric, better, vn, vb, None, None, None, False, False, "no value on one side", verdict="n/a"
        )
    diff = vn - vb
    sign = 1.0 if better == "lower" else -1.0  # worse = positive after the sign
    beyond = sign * diff > tolerance.allowed(vb)  # worse beyond the tolerance
    lo = hi = None
    outside, note, test = True, "", "none"
    if dn.loo is not None and db.loo is not None and len(dn.loo) > 1 and len(db.loo) > 1:
        if paired and len(dn.loo) == len(db.loo):
            _, lo, hi = paired_jackknife(vn, dn.loo, vb, db.loo)
            test = "paired jackknife"
        else:
            _, lo, hi = unpaired_jackknife(vn, dn.loo, vb, db.loo)
            test = "unpaired"
            note = "unpaired: other seeds or blocks"
        outside = (lo > 0) if better == "lower" else (hi < 0)
    elif db.legacy or dn.legacy:
        note = "baseline before the jackknife: tolerance only"
    elif beyond:
        note = "no seed blocks: tolerance only"
    # the gate: worse beyond the tolerance and the interval of new − baseline wholly on the worse side
    regression = beyond and outside
    if sign * diff <= 0:
        verdict = "ok"
    elif not beyond:
        verdict = "within tolerance"
    elif not outside:
        verdict = "within the interval"
    else:
        verdict = "REGRESSION"
    return Row(config, nfe, metric, better, vn, vb, diff, lo, hi, sign * diff > 0, regression, note, test, verdict)


def compare_paths(
    new: str | os.PathLike,
    baseline: str | os.PathLike,
    *,
    tolerance: str | Tolerance = "0%",
    metrics: Sequence[str] | None = None,
) -> Comparison:
    """compare_cells over two stores or JSON exports; bad input raises CompareInputError (exit 2)."""
    tol = tolerance if isinstance(tolerance, Tolerance) else parse_tolerance(tolerance)
    try:
        return compare_cells(_load(new, "NEW"), _load(baseline, "BASELINE"), tolerance=tol, metrics=metrics)
    except CompareInputError:
        raise
    except (DiffbenchError, OSError, ValueError, KeyError, TypeError) as exc:  # malformed input, never "regression"
        raise CompareInputError(f"cannot compare {new} with {baseline}: {exc}") from None
