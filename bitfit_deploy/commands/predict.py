"""`bitfit-deploy predict`: run a bundle's task on texts and print one JSON line per input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO

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
    type=click.File("rb"),
    default=None,
    help="File with one input per line ('-' for stdin); for a pair task a tab separates "
    "text and text_pair. Output line N answers input line N.",
)
@click.option(
    "--input-format",
    type=click.Choice(["auto", "text", "jsonl"]),
    default="auto",
    show_default=True,
    help='Lines of text, or JSON lines {"text": ..., "text_pair": ...}; auto: jsonl for a '
    '.jsonl, .ndjson or .json file, or when every line is a JSON object with a "text".',
)
@click.argument("texts", nargs=-1)
def command(
    bundle: Path,
    task: str,
    deltas: tuple[Path, ...],
    input_file: BinaryIO | None,
    input_format: str,
    variant: str,
    provider: str,
    threads: int | None,
    parallel: str,
    texts: tuple[str, ...],
) -> None:
    """Predict TASK for each TEXT, then each line of --input; print one JSON line per input.

    An input that cannot be predicted (an empty line, one text for a pair task, ...) gets an
    error line {"line": N, "error": ..., "detail": ...} in its place, and the exit status is 1.
    """
    from bitfit_deploy.commands._inputs import (
        Row,
        guess_format,
        is_json_lines_name,
        read_input,
        read_rows,
        split_lines,
        text_row,
    )
    from bitfit_deploy.errors import InvalidInputError, TaskNotFoundError
    from bitfit_deploy.runtime import Runtime

    lines = split_lines(read_input(input_file)) if input_file is not None else []
    if not texts and not lines:
        raise InvalidInputError(
            "nothing to predict: give TEXT arguments or --input FILE (one input per line)."
        )
    runtime = Runtime(
        bundle, provider=provider, threads=threads, variant=variant, parallel=parallel
    )
    for delta in deltas:
        runtime.load_task(delta, replace=True)
    info = runtime.tasks.get(task)
    if info is None:
        loaded = ", ".join(sorted(runtime.tasks)) or "none"
        raise TaskNotFoundError(
            f"task {task!r} is not loaded (loaded: {loaded}); pass --delta FILE to load it."
        )
    if input_format == "auto":
        input_format = guess_format(getattr(input_file, "name", ""), lines)
        if input_format == "jsonl" and not is_json_lines_name(getattr(input_file, "name", "")):
            click.echo(
                'reading --input as JSON lines: every line is a JSON object with a "text"; pass '
                "--input-format text to read the lines as plain text.",
                err=True,
            )
    rows = [text_row("argument", i, t, info.inputs) for i, t in enumerate(texts, 1)]
    rows += read_rows(lines, input_format, info.inputs)
    checked = []
    for i, row in enumerate(rows):
        if row.error is None:
            try:
                runtime.validate_input(task, row.item, row.number)
            except InvalidInputError as exc:
                rows[i] = Row(row.source, row.number, None, str(exc))
                continue
            checked.append(i)
    predictions = runtime.predict(task, [rows[i].item for i in checked]) if checked else []
    answers = dict(zip(checked, predictions, strict=True))
    for i, row in enumerate(rows):
        out = answers[i].to_dict() if i in answers else row.error_dict()
        click.echo(json.dumps(out, ensure_ascii=False))
    failed = len(rows) - len(checked)
    if failed:
        raise click.ClickException(
            f"{failed} of {len(rows)} inputs could not be predicted; see their error lines."
        )
