"""The `diffbench` command: one Typer app per command group, combined here."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="diffbench",
    help="Benchmark diffusion samplers on pretrained checkpoints at exact NFE budgets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    """Attach every command group; each module adds its commands to `app`."""
    from diffbench.cli import listing, sample  # noqa: F401

    for name in ("metrics", "checkpoints"):
        try:
            __import__(f"diffbench.cli.{name}")
        except ModuleNotFoundError as exc:  # a group not yet present in this build
            if exc.name != f"diffbench.cli.{name}":
                raise


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; a user error is one line on stderr and a non-zero exit."""
    from diffbench.errors import DiffbenchError

    _register()
    try:
        app(args=argv, standalone_mode=False)
    except DiffbenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(1)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
