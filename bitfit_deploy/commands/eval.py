"""`bitfit-deploy eval`: score a task as the runtime serves it on labelled data; write a JSON report."""

from __future__ import annotations

from pathlib import Path

import click

from bitfit_deploy.commands._options import model_option, reading_options, runtime_options


@click.command()
@runtime_options
@click.option(
    "--task",
    required=True,
    help="Task shipped in the bundle, or the path of a delta file of the bundle's base.",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True),
    help="Labelled data: TSV, CSV, JSON, JSONL, Parquet or a datasets folder (as for train).",
)
@click.option(
    "--text-column",
    default=None,
    help="Text column [default: the preset's, else the one the task was trained on].",
)
@click.option("--text-pair-column", default=None, help="Second text column of sentence pairs.")
@click.option("--label-column", default=None, help="Label column.")
@click.option(
    "--preset",
    default=None,
    help="GLUE preset (sst2, cola, ...) [default: the one the task was trained with].",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Rows per run."
)
@click.option(
    "--max-rows", type=click.IntRange(min=1), default=None, help="Score only the first N rows."
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the JSON report here.",
)
@click.option(
    "--compare-torch",
    is_flag=True,
    help="Also run the PyTorch model (base + delta) and report the largest logit difference "
    "(needs the train extra).",
)
@reading_options
@model_option
@click.option("--force", is_flag=True, help="Overwrite an existing --output.")
def command(
    bundle: Path,
    variant: str,
    provider: str,
    threads: int | None,
    parallel: str,
    task: str,
    data: str,
    text_column: str | None,
    text_pair_column: str | None,
    label_column: str | None,
    preset: str | None,
    batch_size: int,
    max_rows: int | None,
    output: Path | None,
    compare_torch: bool,
    quoting: str | None,
    drop_empty: bool,
    model: str | None,
    force: bool,
) -> None:
    """Predict every row of --data for --task with the runtime (no torch); print and save the metrics."""
    from bitfit_deploy._io import check_output
    from bitfit_deploy.data import Columns
    from bitfit_deploy.evaluate import compare_with_torch, evaluate, write_report

    if output is not None:
        check_output(output, force, "report", file=True)  # before minutes of predictions, not after
    columns = Columns(text_column, text_pair_column, label_column)
    report = evaluate(
        bundle,
        task,
        data,
        columns,
        preset,
        variant=variant,
        provider=provider,
        threads=threads,
        parallel=parallel,
        batch_size=batch_size,
        max_rows=max_rows,
        quoting=quoting,
        drop_empty=drop_empty,
    )
    if compare_torch:
        compare_with_torch(
            report,
            bundle,
            task,
            data,
            columns,
            preset,
            model,
            batch_size,
            max_rows,
            quoting=quoting,
            drop_empty=drop_empty,
        )
    click.echo(report.summary())
    if output is not None:
        write_report(report, output, force=force)
        click.echo(f"wrote {output}")
