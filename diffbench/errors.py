"""User-facing errors: each one is a single clear line; the CLI prints it and exits non-zero."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DiffbenchError(Exception):
    """An error the user can cause and fix; its message is one line, shown without a traceback."""

    exit_code = 1


class UnknownNameError(DiffbenchError, KeyError):
    """A name (solver, schedule, model, extractor, ...) that no registry holds."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(unknown_message(kind, name, self.valid))

    def __str__(self) -> str:
        return self.args[0]


class BudgetError(DiffbenchError):
    """An NFE budget the solver cannot hit exactly, or one too small for it."""


class NonFiniteError(DiffbenchError):
    """A NaN or Inf appeared in the sampler state."""


class ConfigError(DiffbenchError):
    """An option that is malformed, out of range, or does not apply to the chosen method."""


class NotApplicableError(ConfigError):
    """An option that does not apply to the chosen solver or schedule (a sweep records such a cell as skipped)."""


class OutputExistsError(DiffbenchError):
    """The output path exists and --overwrite was not given."""


class ModelLoadError(DiffbenchError):
    """A checkpoint that cannot be found, fetched, verified or read."""


class MissingDependencyError(DiffbenchError):
    """An optional dependency needed for this feature is not installed."""


def unknown_message(kind: str, name: str, valid: Iterable[str]) -> str:
    """One line: the unknown name, the closest valid one, and the full list."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown {kind} '{name}'.{hint} Valid: {', '.join(valid)}"
