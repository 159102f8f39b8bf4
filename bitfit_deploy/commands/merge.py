"""`bitfit-deploy merge` (being built)."""

from __future__ import annotations

import click


@click.command()
def command() -> None:
    """Not built yet."""
    raise click.ClickException("'merge' is not built yet")
