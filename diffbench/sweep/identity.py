"""Cell identity: one sha256 over what determines a cell's numbers as it ran; the only place that hashes one.

A store keys its rows by this id, so a finished cell is reused only when the same numbers would come out:
the planned sigma grid itself (float64, exact), the full spec, the NFE, the seeds and blocks, the metrics
and their options, the dtypes and the generator's device kind, and the sha256 of every file that was read
(`files_read`: model, reference statistics, a `file:` schedule; later roles such as a guiding model, a
classifier or a prior add an entry). Batch size, device index, process count and versions are not in it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffbench.metrics.sources import file_sha256
from diffbench.provenance import compact_seeds
from diffbench.sampling.guidance import NULL, load_guide

if TYPE_CHECKING:
    from diffbench.sampling.plan import Plan
    from diffbench.sampling.spec import SamplerSpec
    from diffbench.sweep.bench import Bench
    from diffbench.sweep.grid import Cell

FILE_SCHEDULE = "file:"  # the schedule prefix whose grid is read from a file


def digest(identity: Mapping[str, Any]) -> str:
    """sha256 of an identity's canonical JSON: keys sorted (the order options were given in is irrelevant) and
    every number written as its exact float64 (rho=7 and rho=7.0 are one option value)."""
    text = json.dumps(_canonical(identity), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(x: Any) -> Any:
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int | float):
        return float(x).hex()
    if isinstance(x, Mapping):
        return {str(k): _canonical(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_canonical(v) for v in x]
    return str(x)


def sigma_grid(sigmas: torch.Tensor) -> list[str]:
    """The planned grid as exact float64 hex strings (float.hex), so any change of any sigma changes the id."""
    return [float(s).hex() for s in sigmas.detach().to(torch.float64).cpu().reshape(-1)]


def files_read(bench: Bench, spec: SamplerSpec | None) -> dict[str, str]:
    """{role: sha256} of every file the cell reads: model, reference statistics, a `file:` schedule grid.

    A missing schedule file is recorded as such (planning it fails with its own error before any sampling).
    """
    files = {"model": bench.model_sha256}
    if bench.ref_sha256 is not None:
        files["reference"] = bench.ref_sha256
    if spec is not None and str(spec.schedule).startswith(FILE_SCHEDULE):
        path = Path(str(spec.schedule)[len(FILE_SCHEDULE) :])
        files["schedule"] = file_sha256(path) if path.is_file() else "missing"
    if spec is not None and spec.guidance is not None and spec.guide not in (None, NULL):
        from diffbench.sweep.bench import model_sha256

        files["guide"] = model_sha256(load_guide(str(spec.guide)))  # the guiding model (--guide MODEL)
    if spec is not None and spec.classifier_guidance is not None and spec.classifier is not None:
        from diffbench.models.noisy_classifier import load_classifier

        files["classifier"] = load_classifier(str(spec.classifier)).sha256  # classifier guidance's classifier
    if spec is not None and spec.prior is not None:
        from diffbench.priors import prior_sha256

        files["prior"] = prior_sha256(str(spec.prior))  # the prior file, or the ideal prior's data
    if bench.kl_data is not None and "prior-kl" in bench.metrics:
        from diffbench.priors import load_data

        files["kl-data"] = load_data(bench.kl_data).sha256  # the data set prior-kl measures against
    return files


def cell_identity(bench: Bench, spec: SamplerSpec, plan: Plan | None) -> tuple[str, dict[str, Any]]:
    """(id, identity) of a cell: sha256 of everything that determines its numbers, nothing that does not.

    In: the planned sigmas (exact float64; None for a cell that could not be planned), files_read, the spec's
    options (endpoint and requested NFE included; an option left unset (None) is left out, so a new option
    does not change the identity of cells that do not use it), the NFE spent, seeds, class, blocks, metrics
    and their options, extractor id, sampler and model dtypes, and the kind of device of the random
    generators (a CPU and a CUDA generator give different streams for one seed, REFERENCE §1).
    """
    identity = {
        "files_read": files_read(bench, spec),
        "sigmas": None if plan is None else sigma_grid(plan.sigmas),
        "spec": {k: v for k, v in spec.to_dict().items() if v is not None},
        "nfe": -1 if plan is None else int(plan.nfe),
        "seeds": compact_seeds(bench.seeds),
        "class": bench.class_label,
        "blocks": bench.blocks,
        "metrics": sorted(bench.metrics),
        "metric_options": bench.metric_options(),
        "extractor": bench.extractor_id,
        "dtypes": {"sampler": spec.dtype, "model": _model_dtype(bench.model)},
        "generator": bench.device.type,
    }
    return digest(identity), identity


def skipped_identity(cell: Cell, bench: Bench) -> tuple[str, dict[str, Any]]:
    """Identity of a cell that cannot run: its spec without a plan, or only its options without a spec."""
    if cell.spec is not None:
        return cell_identity(bench, cell.spec, cell.plan)
    ident = {"files_read": files_read(bench, None), "options": cell.options, "skipped": True}
    return digest(ident), ident


def _model_dtype(model: Any) -> str | None:
    if isinstance(model, torch.nn.Module):
        for t in (*model.parameters(), *model.buffers()):
            if t.is_floating_point():
                return str(t.dtype).replace("torch.", "")
    return None
