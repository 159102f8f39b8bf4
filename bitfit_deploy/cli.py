"""The `bitfit-deploy` command line: a click group over the library; errors become exit messages here.

Each command lives in `bitfit_deploy/commands/<name>.py` and imports heavy libraries (torch,
transformers) only when it runs, so `bitfit-deploy --help` and runtime-only installs stay light.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from typing import Any

import click

from bitfit_deploy import __version__
from bitfit_deploy.errors import BitFitError

COMMANDS = ("train", "inspect", "merge", "export", "verify", "predict", "eval", "serve", "cache")


class _Group(click.Group):
    """Turns BitFitError into a one-line error and exit status 1 (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BitFitError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bitfit-deploy")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """Train, export and serve many BitFit tasks on one frozen transformer."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")


for _name in COMMANDS:
    cli.add_command(importlib.import_module(f"bitfit_deploy.commands.{_name}").command, _name)


def main(argv: Sequence[str] | None = None) -> Any:
    """Entry point; `main([...])` runs a command in-process (for tests)."""
    return cli.main(args=list(argv) if argv is not None else None, prog_name="bitfit-deploy")
