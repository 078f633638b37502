"""The usage-error classes of the click that the installed typer runs on.

Newer typer vendors click as ``typer._click``: its parser raises, and fills in the usage line for, its
own exception classes, which are not the click package's. Commands raise ``click.UsageError`` and
``click.BadParameter`` from here, so their errors get a usage line and ``imgcls.cli.main`` catches them.
"""

from __future__ import annotations

try:
    from typer._click import exceptions as click
except ImportError:  # an older typer runs on the click package itself
    from click import exceptions as click  # type: ignore[no-redef]

__all__ = ["click"]
