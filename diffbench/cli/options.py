"""One vocabulary of sampler options for every command (DESIGN.md, "One vocabulary").

Each option is declared once, as a SamplerSpec field with its OptionInfo (sampling/spec.py: keyword, flag,
help, choices from the registries, bounds); the CLI options here are derived from those declarations.
`sample`, `fid --model` and `sweep` all get their sampler options from `sampler_options()`, so a new option
appears in every command at once (a sweep axis too), and every error names the option as the user wrote it.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

import typer

PANEL = "Sampler options"


@dataclass(frozen=True)
class SamplerOption:
    """One sampler option: `key` is the SamplerSpec / Python keyword, `flag` the CLI spelling."""

    key: str
    flag: str
    type: type
    help: str
    choices: tuple[str, ...] | None = None
    min: float | None = None  # inclusive lower bound
    positive: bool = False  # strictly > 0 (and finite)
    max: float | None = None  # inclusive upper bound
    default: Any = None  # what SamplerSpec uses when the option is not given (shown in --help)

    @property
    def param(self) -> str:
        """The Python parameter name typer sees (never shown to the user)."""
        return "opt_" + self.key

    @property
    def is_flag(self) -> bool:
        return self.type is bool


def _cli_type(annotation: Any) -> type:
    """The type a flag parses to: the field's type without None; a union of several (str | int) stays text."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return args[0] if len(args) == 1 else str


def _derived() -> tuple[SamplerOption, ...]:
    """Every SamplerSpec field declared for the CLI, in declaration order (the order of --help)."""
    from diffbench.sampling.spec import declared_options

    out = []
    for key, annotation, default, info in declared_options():
        if not info.cli:
            continue
        kind = _cli_type(annotation)
        out.append(
            SamplerOption(
                key,
                info.flag or "--" + key.lower().replace("_", "-"),
                kind,
                info.help,
                choices=info.choices or None,
                min=info.min,
                positive=info.positive,
                max=info.max,
                default=None if kind is bool else default,
            )
        )
    return tuple(out)


# Derived from SamplerSpec's declarations (sampling/spec.py): a new option is one field there.
SAMPLER_OPTIONS: tuple[SamplerOption, ...] = _derived()

BY_KEY = {o.key: o for o in SAMPLER_OPTIONS}
BY_FLAG = {o.flag: o for o in SAMPLER_OPTIONS}


def _choice_enum(o: SamplerOption) -> type[Enum]:
    return Enum(f"Choice_{o.key}", {c: c for c in o.choices or ()}, type=str)  # type: ignore[misc,return-value]


def _annotation(o: SamplerOption, *, axes: bool) -> Any:
    default = f" [default: {o.default}]" if o.default is not None else ""
    if o.is_flag:
        return Annotated[bool, typer.Option(o.flag, help=o.help, rich_help_panel=PANEL)]
    if axes:
        return Annotated[
            str | None,
            typer.Option(o.flag, help=o.help + default + " A comma list makes it an axis.", rich_help_panel=PANEL),
        ]
    if o.choices:
        return Annotated[_choice_enum(o) | None, typer.Option(o.flag, help=o.help + default, rich_help_panel=PANEL)]
    extra: dict[str, Any] = {}
    if o.min is not None and o.type is int:
        extra["min"] = int(o.min)
    return Annotated[o.type | None, typer.Option(o.flag, help=o.help + default, rich_help_panel=PANEL, **extra)]


def check_value(o: SamplerOption, value: Any) -> Any:
    """Validate one typed value against the option's bounds and choices; errors name the flag."""
    from diffbench.errors import ConfigError

    if isinstance(value, Enum):
        value = value.value
    if o.choices and value not in o.choices:
        raise ConfigError(f"{o.flag} must be one of {', '.join(o.choices)}; got '{value}'")
    if o.type is float:
        if not math.isfinite(value):
            raise ConfigError(f"{o.flag} must be a finite number, got {value}")
        if o.positive and value <= 0:
            raise ConfigError(f"{o.flag} must be > 0, got {value}")
    if o.min is not None and o.type in (int, float) and value < o.min:
        raise ConfigError(f"{o.flag} must be >= {o.min:g}, got {value}")
    if o.max is not None and o.type in (int, float) and value > o.max:
        raise ConfigError(f"{o.flag} must be <= {o.max:g}, got {value}")
    return value


def parse_value(o: SamplerOption, text: str) -> Any:
    """One element of a comma list, typed and validated; the error names the flag."""
    from diffbench.errors import ConfigError

    text = text.strip()
    if o.type is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{o.flag}: '{text}' is not true/false")
    if o.type is int:
        try:
            value: Any = int(text)
        except ValueError:
            raise ConfigError(f"{o.flag}: '{text}' is not an integer") from None
    elif o.type is float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{o.flag}: '{text}' is not a number") from None
    else:
        if not text:
            raise ConfigError(f"{o.flag}: empty value in the list")
        value = text
    return check_value(o, value)


def _two_numbers(text: str) -> bool:
    parts = text.split(",")
    try:
        [float(p) for p in parts]
    except ValueError:
        return False
    return len(parts) == 2


def parse_axis(o: SamplerOption, text: str) -> list[Any]:
    """'18,35,79' -> [18, 35, 79] (typed, validated, duplicates refused). --guidance-interval: 'LO,HI' (no ':',
    two numbers) is one interval, as `sample` takes it; a list of intervals writes LO:HI entries ('0:1,0.3:5')."""
    from diffbench.errors import ConfigError

    if o.key == "guidance_interval":
        from diffbench.sampling.guidance import parse_interval

        parts = [text] if ":" not in text and _two_numbers(text) else text.split(",")
        values = [parse_value(o, part) for part in parts]
        for v in values:
            parse_interval(v)  # a malformed interval is blamed on its flag, not on a cell of the grid
    else:
        values = [parse_value(o, part) for part in text.split(",")]
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"{o.flag}: repeated value in '{text}'")
    return values


def sampler_options(*, axes: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: add every sampler option to a typer command as a keyword-only option.

    The command receives them as `sampler`: {spec keyword: value} for the options the user gave
    (flags only when set); with `axes=True`, {spec keyword: [values]} parsed from comma lists.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(fn).parameters.values()
            if p.name != "sampler"
        ]
        taken = {p.name for p in own}
        clash = [o.key for o in SAMPLER_OPTIONS if o.param in taken]
        if clash:
            raise TypeError(f"{fn.__name__} defines sampler options itself: {clash}")
        added = [
            inspect.Parameter(
                o.param,
                inspect.Parameter.KEYWORD_ONLY,
                default=False if o.is_flag else None,
                annotation=_annotation(o, axes=axes),
            )
            for o in SAMPLER_OPTIONS
        ]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            values: dict[str, Any] = {}
            for o in SAMPLER_OPTIONS:
                v = kwargs.pop(o.param)
                if o.is_flag:
                    if v:
                        values[o.key] = [True] if axes else True
                elif v is not None:
                    values[o.key] = parse_axis(o, v) if axes else check_value(o, v)
            return fn(**kwargs, sampler=values)

        positional = [p for p in own if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        keyword = [p.replace(kind=p.KEYWORD_ONLY) for p in own if p not in positional]
        params = [p.replace(kind=p.KEYWORD_ONLY) for p in positional] + keyword + added
        del command.__wrapped__
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


_IDENT_KEYS = sorted((o.key for o in SAMPLER_OPTIONS if "_" in o.key or o.key != o.key.lower()), key=len, reverse=True)
_IDENT_RE = re.compile(r"(?<![-\w])(" + "|".join(map(re.escape, _IDENT_KEYS)) + r")\b")
_LIST_RE = re.compile(r"(option\(s\) |options? |takes: )(\w+(?:, \w+)*)")


def flag_message(text: str) -> str:
    """Rewrite spec keywords in an error message as the CLI flags the user typed (S_churn -> --churn).

    Identifier-like keywords (S_churn, sigma_min) are rewritten anywhere; plain-word ones (alpha, order)
    only inside a list of options, so ordinary words in a message stay words.
    """

    def in_list(m: re.Match[str]) -> str:
        items = [BY_KEY[i].flag if i in BY_KEY else i for i in m.group(2).split(", ")]
        return m.group(1) + ", ".join(items)

    text = _LIST_RE.sub(in_list, text)
    return _IDENT_RE.sub(lambda m: BY_KEY[m.group(0)].flag, text)
