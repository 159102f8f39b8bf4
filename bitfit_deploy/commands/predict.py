"""`bitfit-deploy predict`: run a bundle's task on texts and print one JSON line per input."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bitfit_deploy.commands._options import runtime_options


@click.command()
@runtime_options
@click.option(
    "--task", required=True, help="Task to predict (shipped in the bundle or loaded with --delta)."
)
@click.option(
    "--delta",
    "deltas",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Delta file to load as a task (repeatable).",
)
@click.option(
    "--input",
    "input_file",
    type=click.File("r", encoding="utf-8"),
    default=None,
    help="File with one input per line; a tab separates a text pair ('-' for stdin).",
)
@click.argument("texts", nargs=-1)
def command(
    bundle: Path,
    task: str,
    deltas: tuple[Path, ...],
    input_file,
    variant: str,
    provider: str,
    threads: int | None,
    texts: tuple[str, ...],
) -> None:
    """Predict TASK for each TEXT (and each line of --input); print JSON lines in input order."""
    from bitfit_deploy.errors import InvalidInputError
    from bitfit_deploy.runtime import Runtime

    inputs: list[str | tuple[str, str]] = list(texts)
    if input_file is not None:
        inputs += [_parse_line(line) for line in input_file.read().splitlines() if line.strip()]
    if not inputs:
        raise InvalidInputError(
            "nothing to predict: give TEXT arguments or --input FILE (one input per line)."
        )
    runtime = Runtime(bundle, provider=provider, threads=threads, variant=variant)
    for delta in deltas:
        runtime.load_task(delta, replace=True)
    for prediction in runtime.predict(task, inputs):
        click.echo(json.dumps(prediction.to_dict(), ensure_ascii=False))


def _parse_line(line: str) -> str | tuple[str, str]:
    """A line is one text, or a text pair separated by the first tab."""
    if "\t" in line:
        text, pair = line.split("\t", 1)
        return (text, pair)
    return line
