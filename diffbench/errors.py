"""User-facing errors: each one is a single clear line; the CLI prints it and exits non-zero."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DiffbenchError(Exception):
    """An error the user can cause and fix; its message is one line, shown without a traceback.

    Exit codes: 2 for usage errors (a malformed or out-of-range option, an unknown name, an option that does
    not apply), as click gives for its own checks; 1 for everything else (files, networks, numbers).
    """

    exit_code = 1


class UsageError(DiffbenchError):
    """What the command line (or a config file standing in for it) asks is malformed: exit 2, like click."""

    exit_code = 2


class UnknownNameError(UsageError, KeyError):
    """A name (solver, schedule, model, extractor, ...) that no registry holds."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], *, list_all: bool = False):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(unknown_message(kind, name, self.valid, list_all=list_all))

    def __str__(self) -> str:
        return self.args[0]


class BudgetError(UsageError):
    """An NFE budget the solver cannot hit exactly, or one too small for it (a usage error: exit 2 everywhere)."""


class NonFiniteError(DiffbenchError):
    """A NaN or Inf appeared in the sampler state."""


class ConfigError(UsageError):
    """An option that is malformed, out of range, or does not apply to the chosen method."""


class NotApplicableError(ConfigError):
    """An option that does not apply to the chosen solver or schedule (a sweep records such a cell as skipped)."""


class OutputExistsError(DiffbenchError):
    """The output path exists and --overwrite was not given."""


class ModelLoadError(DiffbenchError):
    """A checkpoint that cannot be found, fetched, verified or read."""


class MissingDependencyError(DiffbenchError):
    """An optional dependency needed for this feature is not installed."""


SHORT_LIST = 200  # characters of names listed in full; a longer list shows the closest few and where to see all
# how to see every name of a kind whose list is long
LIST_ALL = {
    "model": "all: 'diffbench checkpoints list' and the built-in gmm, ideal",
    "checkpoint": "all: 'diffbench checkpoints list'",
    "solver": "all: 'diffbench solvers'",
    "schedule": "all: 'diffbench schedules'",
    "recipe": "all: 'diffbench recipes'",
}


def unknown_message(kind: str, name: str, valid: Iterable[str], *, list_all: bool = False) -> str:
    """One line: the unknown name, the closest valid ones (at most 3), and the full list only when it is short
    (or list_all: names a user must type exactly, few enough to read, e.g. recipes); a long list is replaced by
    its size and the command that shows it."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = ""
    if close:
        hint = " Did you mean " + (f"{', '.join(map(repr, close[:-1]))} or " if len(close) > 1 else "")
        hint += f"{close[-1]!r}?"
    names = ", ".join(valid)
    where = f"; {LIST_ALL[kind]}" if kind in LIST_ALL else ""
    if list_all:
        return f"unknown {kind} '{name}'.{hint} Valid: {names}{where}"
    if len(names) <= SHORT_LIST:
        return f"unknown {kind} '{name}'.{hint} Valid: {names}"
    if close:
        return f"unknown {kind} '{name}'.{hint} ({len(valid)} valid names{where})"
    return f"unknown {kind} '{name}'. Valid: {', '.join(valid[:4])} and {len(valid) - 4} more{where}"
