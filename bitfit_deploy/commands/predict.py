"""`bitfit-deploy predict` (being built)."""

from __future__ import annotations

import click


@click.command()
def command() -> None:
    """Not built yet."""
    raise click.ClickException("'predict' is not built yet")
