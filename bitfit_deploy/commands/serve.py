"""`bitfit-deploy serve` (being built)."""

from __future__ import annotations

import click


@click.command()
def command() -> None:
    """Not built yet."""
    raise click.ClickException("'serve' is not built yet")
