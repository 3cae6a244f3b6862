"""The `diffbench` command: one Typer app per command group, combined here.

Every error a user can cause ends here as one line on stderr and a non-zero exit: usage errors exit 2,
whether typer/click find them (whichever copy of click the installed typer carries) or diffbench does (a
value out of range, an unknown name, an option that does not apply: errors.UsageError); diffbench's other
errors (files, downloads, numbers) exit 1; interrupts 130 (SIGTERM 143). Nothing else is printed as a
traceback except real bugs.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

app = typer.Typer(
    name="diffbench",
    help="Benchmark diffusion samplers on pretrained checkpoints at exact NFE budgets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from diffbench import __version__

        typer.echo(f"diffbench {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Benchmark diffusion samplers on pretrained checkpoints at exact NFE budgets."""


def _register() -> None:
    """Attach every command group; each module adds its commands to `app`."""
    from diffbench.cli import listing, sample  # noqa: F401

    for name in ("metrics", "checkpoints", "sweep", "scale", "tune", "prior"):
        try:
            __import__(f"diffbench.cli.{name}")
        except ModuleNotFoundError as exc:  # a group not yet present in this build
            if exc.name != f"diffbench.cli.{name}":
                raise


def _click_modules() -> list:
    """The click exception modules in play: click's own and typer's vendored copy (typer >= 0.2x)."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(__import__(name, fromlist=["ClickException"]))
        except ImportError:
            continue
    return mods


def _is(exc: BaseException, cls_name: str) -> bool:
    return any(isinstance(exc, getattr(m, cls_name)) for m in _click_modules() if hasattr(m, cls_name))


def _usage_line(exc: BaseException) -> str:
    """One line for a click/typer usage error, naming the option and where to get help."""
    msg = exc.format_message()  # type: ignore[attr-defined]
    param = getattr(exc, "param", None)
    if param is not None and _is(exc, "BadParameter") and not _is(exc, "MissingParameter") and "'-" not in msg:
        names = [n for n in getattr(param, "opts", []) if n.startswith("--")] or [getattr(param, "name", "?")]
        hint = getattr(param, "human_readable_name", None) or names[0]
        if getattr(param, "param_type_name", "") == "argument":
            msg = f"Invalid value for {hint.upper()}: {msg}"
        else:
            msg = f"Invalid value for '{names[0]}': {msg}"
    ctx = getattr(exc, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return " ".join(f"error: {msg}{where}".split())


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so every command's cleanup (sidecars, partial files) runs."""


COMMAND: list[str] = []  # the arguments of this run (diffbench.cli.distributed compares them across ranks)
_RECEIVED: list[int] = []  # signals received: typer >= 0.2x turns an interrupt into a silent exit code 130


def _on_signal(signum, frame) -> None:  # noqa: ARG001
    import signal

    _RECEIVED.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _interrupted() -> None:
    """Exit after an interrupt: one line, 130 for SIGINT (Ctrl-C), 143 for SIGTERM."""
    import signal

    term = signal.SIGTERM in _RECEIVED
    typer.echo("error: terminated (SIGTERM)" if term else "error: interrupted", err=True)
    sys.exit(143 if term else 130)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; every user error is one line on stderr and a non-zero exit."""
    import signal

    from diffbench.errors import DiffbenchError

    signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # keep SIG_IGN (nohup, background jobs)
        signal.signal(signal.SIGINT, _on_signal)
    _register()
    args = sys.argv[1:] if argv is None else argv
    COMMAND[:] = [str(a) for a in args]  # what the ranks of a torchrun launch compare before any work
    if not args:
        typer.echo(typer.main.get_command(app).get_help(_context()))
        sys.exit(0)
    try:
        _check_launch(args)
        rv = app(args=args, prog_name="diffbench", standalone_mode=False)
    except DiffbenchError as exc:
        from diffbench.cli.options import flag_message
        from diffbench.distributed import env_rank

        rank = env_rank()  # under torchrun: an error all ranks know is printed by rank 0 alone
        if not (rank and getattr(exc, "all_ranks", False)):
            typer.echo(f"error: {f'(rank {rank}) ' if rank else ''}{flag_message(str(exc))}", err=True)
        if getattr(exc, "all_ranks", False):
            from diffbench.distributed import farewell

            farewell()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click's exceptions: usage errors (2), aborts (1), from any click copy
        if _is(exc, "NoArgsIsHelpError"):
            ctx = getattr(exc, "ctx", None)
            typer.echo(ctx.get_help() if ctx is not None else str(exc))
            sys.exit(0)
        if _is(exc, "UsageError"):
            typer.echo(_usage_line(exc), err=True)
            sys.exit(2)
        if _is(exc, "ClickException"):
            typer.echo(f"error: {exc.format_message()}", err=True)  # type: ignore[attr-defined]
            sys.exit(getattr(exc, "exit_code", 1))
        if _RECEIVED or isinstance(exc.__context__, KeyboardInterrupt) or type(exc).__name__ == "Abort":
            _interrupted()
        if _is(exc, "Exit"):
            sys.exit(getattr(exc, "exit_code", 0))
        raise
    if _RECEIVED:
        _interrupted()
    sys.exit(rv if isinstance(rv, int) else 0)


RANKED = ("sweep", "fid", "sample")  # the commands that share their work across the ranks of a torchrun launch


def _check_launch(args: list[str]) -> None:
    """Under torchrun, only the commands that share work across ranks run (the others would write one output
    from every rank at once)."""
    from diffbench.distributed import launched

    name = next((a for a in args if not a.startswith("-")), None)
    if launched() and name is not None and name not in RANKED:
        from diffbench.errors import UsageError

        raise UsageError(
            f"diffbench {name} runs in one process; under torchrun only 'sweep', 'sample' and 'fid --model' "
            "share their work across ranks: run it without torchrun"
        )


def _context():
    command = typer.main.get_command(app)
    return command.make_context("diffbench", [], resilient_parsing=True)
