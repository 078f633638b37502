"""The ``imgcls`` command line: the trainer's, the service's and the benchmarks' commands under one
name, and the one place where errors become messages and exit codes.

Exit codes: 0 success; 1 a failure while running (export parity, a crashed epoch); 2 bad input the
user can fix (config, data, model name, bundle, a missing extra); 130 interrupted.

Each half keeps its commands in its own ``cli`` module and imports its libraries only when a command
runs, so ``imgcls serve`` imports nothing of the trainer, and a serving install (without the ``train``
extra) still has a working command line.
"""

from __future__ import annotations

import logging
import sys

import typer

from benchmarks import cli as benchmarks_cli
from imgcls.errors import ImgclsError
from imgcls.explain import cli as explain_cli
from imgcls.extras import extra_providing, missing_requirements
from imgcls.usage import click
from service import cli as service_cli
from trainer import cli as trainer_cli

try:  # the click package itself, for any code that raises its classes rather than typer's
    import click as click_package
except ImportError:  # pragma: no cover - uvicorn depends on click, so it is there
    click_package = click  # type: ignore[assignment]

__all__ = ["app", "main", "run"]

app = typer.Typer(
    name="imgcls",
    help="Train, evaluate, export and serve image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(trainer_cli.app)  # data, models, train, cv, lr-find, export, report
app.add_typer(service_cli.app)  # serve, predict, feedback
app.add_typer(benchmarks_cli.app)  # bench, evaluate
app.add_typer(explain_cli.app)  # explain


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (tests swap it; a stored stream may be closed)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this directly).

    A usage error (unknown command or option, a bad value, a command's own UsageError) prints click's
    usage line, the error and any close matches, and returns 2; a bare group (``imgcls``, ``imgcls
    bench``) prints its help on stderr and returns 2, as click's ``no_args_is_help`` does.
    """
    # Our progress lines at INFO; libraries (the ONNX exporter's passes, tensorboard) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[_StderrHandler()], force=True)
    logging.getLogger("imgcls").setLevel(logging.INFO)
    try:
        # Without standalone mode, typer returns the code of a typer.Exit (--help: 0) instead of exiting.
        code = app(args=argv, prog_name="imgcls", standalone_mode=False)
    except ImgclsError as exc:
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    # typer's classes, and the click package's for any code that raises those (their usage line is missing
    # then, their message is not).
    except (click.ClickException, click_package.ClickException) as exc:
        exc.show()
        return exc.exit_code
    except (typer.Abort, click_package.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return 130
    except FloatingPointError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    except ModuleNotFoundError as exc:
        # A command reached a library of an extra that is not installed (commands check theirs first;
        # this is the net under the ones that reach one further in). Any other missing module is a bug
        # and keeps its traceback.
        extra = extra_providing(exc.name)
        if extra is None:
            raise
        typer.echo(
            f"error: this command needs the Python module {exc.name!r}, from the {extra} extra, which is "
            f'not installed here (missing: {", ".join(missing_requirements(extra))}): pip install "imgcls[{extra}]"',
            err=True,
        )
        return 2
    if code == 130:  # typer turns a Ctrl-C inside a command into Exit(130)
        typer.echo("interrupted", err=True)
    return code if isinstance(code, int) else 0


def run() -> None:
    sys.exit(main())
