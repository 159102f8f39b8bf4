"""`bitfit-deploy train`: train one task's biases and head and write its delta file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from bitfit_deploy.commands._options import (
    POOLING_CHOICES,
    FiniteFloat,
    model_option,
    reading_options,
)
from bitfit_deploy.contract import PROBLEM_TYPES

if TYPE_CHECKING:
    from bitfit_deploy.data import TaskData


@click.command()
@click.option(
    "--task", required=True, help="Task name stored in the delta (the name clients ask for)."
)
@click.option(
    "--train",
    "train_path",
    required=True,
    type=click.Path(exists=True),
    help="Training data: TSV, CSV, JSON, JSONL, Parquet or a datasets folder.",
)
@click.option(
    "--eval",
    "eval_path",
    type=click.Path(exists=True),
    default=None,
    help="Evaluation data; scored each epoch, the best epoch is kept.",
)
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Delta file to write (.safetensors); a folder with --method full.",
)
@model_option
@click.option(
    "--method",
    type=click.Choice(["bitfit", "full", "head"]),
    default="bitfit",
    show_default=True,
    help="bitfit trains biases + head; full trains everything (baseline); head trains the head "
    "alone on the frozen encoder (a linear probe; a delta with no biases).",
)
@click.option(
    "--biases",
    default="all",
    show_default=True,
    help="Biases to train: all, paper (query + intermediate) or a regex over parameter names.",
)
@click.option(
    "--pooling",
    type=click.Choice(POOLING_CHOICES),
    default="auto",
    show_default=True,
    help="How the head pools the encoder output; auto pools as the base was trained.",
)
@click.option(
    "--epochs",
    type=FiniteFloat(),
    default=None,
    help="Training epochs [default: 2; 10 with --method head].",
)
@click.option(
    "--max-steps",
    type=int,
    default=None,
    help="Stop after this many optimizer steps (overrides --epochs).",
)
@click.option(
    "--lr",
    type=FiniteFloat(),
    default=None,
    help="Peak learning rate [default: 5e-3 bitfit, 5e-5 full].",
)
@click.option(
    "--batch-size", type=int, default=32, show_default=True, help="Examples per step and device."
)
@click.option(
    "--max-length",
    type=int,
    default=128,
    show_default=True,
    help="Tokens per example before truncation.",
)
@click.option(
    "--seed",
    type=int,
    default=42,
    show_default=True,
    help="Seed: same seed, same data, same delta.",
)
@click.option(
    "--early-stopping", type=int, default=None, help="Stop after N evaluations without improvement."
)
@click.option(
    "--text-column",
    default=None,
    help="Text column (name, or 0-based index for a file without header).",
)
@click.option(
    "--text-pair-column", default=None, help="Second text column for sentence-pair tasks."
)
@click.option("--label-column", default=None, help="Label column.")
@click.option(
    "--problem-type",
    type=click.Choice(PROBLEM_TYPES),
    default=None,
    help="[default: the preset's, else single_label]",
)
@click.option("--preset", default=None, help="GLUE task preset: sst2, cola, mrpc, rte, stsb, qnli.")
@reading_options
@click.option(
    "--dry-run",
    is_flag=True,
    help="Read and check the data, print what was read, and stop before loading the model.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def command(
    task: str,
    train_path: str,
    eval_path: str | None,
    output: Path,
    model: str | None,
    method: str,
    biases: str,
    pooling: str,
    epochs: float | None,
    max_steps: int | None,
    lr: float | None,
    batch_size: int,
    max_length: int,
    seed: int,
    early_stopping: int | None,
    text_column: str | None,
    text_pair_column: str | None,
    label_column: str | None,
    problem_type: str | None,
    preset: str | None,
    quoting: str | None,
    drop_empty: bool,
    dry_run: bool,
    force: bool,
) -> None:
    """Fine-tune only the biases (and a linear head) of a frozen encoder; write a bias-delta file."""
    from bitfit_deploy._io import check_output
    from bitfit_deploy.train import TrainConfig, check_config, read_data, train

    config = TrainConfig(
        task=task,
        train=train_path,
        eval=eval_path,
        output=str(output),
        model=model,
        method=method,
        biases=biases,
        pooling=pooling,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        early_stopping=early_stopping,
        text_column=text_column,
        text_pair_column=text_pair_column,
        label_column=label_column,
        problem_type=problem_type,
        preset=preset,
        quoting=quoting,
        drop_empty=drop_empty,
        force=force,
    )
    check_config(config)  # before reading the data, not after
    if not dry_run:
        check_output(output, force, "output", file=True)
    data = read_data(config)
    click.echo(_data_summary(config.model, max_length, data))
    if dry_run:
        click.echo("dry run: the data reads cleanly; stopped before loading the model.")
        return
    result = train(config, data=data)
    size = sum(
        f.stat().st_size
        for f in ([output] if output.is_file() else output.rglob("*"))
        if f.is_file()
    )
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()) or "no eval data"
    best = f" (best epoch {result.best_epoch:.3g})" if result.best_epoch is not None else ""
    click.echo(
        f"wrote {output} ({size / 1024:.1f} KB): task {task!r}, {result.trainable_parameters:,} of "
        f"{result.total_parameters:,} parameters trained; eval {metrics}{best}"
    )
    delta = result.delta
    if delta is not None and delta.biases and not any(v.any() for v in delta.biases.values()):
        click.echo(
            "warning: training changed no bias (too few steps: the first ones warm the learning "
            "rate up from 0, or --lr 0); train longer with --epochs or --max-steps.",
            err=True,
        )


def _data_summary(model: str | None, max_length: int, data: TaskData) -> str:
    """What was read, with the rows the model's tokenizer will truncate (no model is loaded)."""
    from bitfit_deploy.data_summary import count_truncated, describe, max_tokens
    from bitfit_deploy.modeling import default_model_path

    model_dir = model or default_model_path()
    limit = max_tokens(model_dir, max_length)
    summary = describe(data, count_truncated(model_dir, data, limit), limit)
    if limit < max_length:
        summary += (
            f"\nnote: --max-length {max_length} is more than this model's {limit} positions; "
            f"inputs are cut at {limit} tokens (pass --max-length {limit} or less to say so)."
        )
    return summary
