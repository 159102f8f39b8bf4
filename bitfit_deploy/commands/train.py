"""`bitfit-deploy train` (being built)."""

from __future__ import annotations

import click


@click.command()
def command() -> None:
    """Not built yet."""
    raise click.ClickException("'train' is not built yet")
