"""`bitfit-deploy merge`: a model folder with a task's biases merged in, for transformers or sentence-transformers."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--delta",
    "delta_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Delta file written by `bitfit-deploy train`.",
)
@click.option(
    "--output", "-o", required=True, type=click.Path(path_type=Path), help="Model folder to write."
)
@click.option(
    "--model",
    type=click.Path(file_okay=False),
    default=None,
    help="Base model folder [default: the delta's base hint, else the packaged MiniLM].",
)
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def command(delta_path: str, output: Path, model: str | None, force: bool) -> None:
    """Merge a task into its base: a folder transformers or sentence-transformers loads (it says which)."""
    from bitfit_deploy.merge import merge

    result = merge(delta_path, output, model=model, force=force)
    click.echo(f"wrote {result.output}: {result.description}")
