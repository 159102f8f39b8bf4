"""Options shared by several commands, defined once: the base model, pooling, and the bundle/runtime."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from bitfit_deploy.contract import POOLINGS
from bitfit_deploy.manifest import VARIANT_FILES
from bitfit_deploy.runtime.parallel import PARALLEL_MODES

F = TypeVar("F", bound=Callable[..., object])

PROVIDERS = ("cpu", "cuda")


class FiniteFloat(click.FloatRange):
    """A float option within its range and finite: click's FloatRange lets "nan" and "inf" (and
    1e400, read as inf) through, and a NaN or endless delay, drain or poll makes no sense."""

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201 - click's signature
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def runtime_options(func: F) -> F:
    """Add --bundle, --variant, --provider, --threads and --parallel, the arguments of `Runtime(...)`."""
    options = [
        click.option(
            "--bundle",
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            required=True,
            help="Bundle folder written by `export --onnx`.",
        ),
        click.option(
            "--variant",
            type=click.Choice(list(VARIANT_FILES)),
            default="fp32",
            show_default=True,
            help="Graph variant of the bundle.",
        ),
        click.option(
            "--provider",
            type=click.Choice(PROVIDERS),
            default="cpu",
            show_default=True,
            help="ONNX Runtime execution provider.",
        ),
        click.option(
            "--threads",
            type=click.IntRange(min=1),
            default=None,
            help="CPU threads [default: ORT's choice for ops, one per physical core for rows].",
        ),
        click.option(
            "--parallel",
            type=click.Choice(PARALLEL_MODES),
            default="auto",
            show_default=True,
            help="How a batch uses the threads: ops splits each operator over them; rows runs "
            "slices of the batch's rows at once, one thread each (faster batches, one core per "
            "single row); auto picks rows for int8 on the CPU, ops otherwise.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


POOLING_CHOICES = ("auto", *POOLINGS)

model_option = click.option(
    "--model",
    type=click.Path(file_okay=False),
    default=None,
    help="Local Hugging Face encoder folder [default: packaged all-MiniLM-L6-v2].",
)
"""--model for the commands that load the base encoder (`train`, `export`)."""


def reading_options(func: F) -> F:
    """Add --quoting and --drop-empty: how the training reader reads a data file (train, eval)."""
    from bitfit_deploy.data_tables import QUOTING

    options = [
        click.option(
            "--quoting",
            type=click.Choice(QUOTING),
            default=None,
            help='How TSV/CSV read ": none (a plain character), csv (a field may be quoted, on '
            "one line) or multiline (a quoted field may hold line breaks) [default: none for "
            "TSV, csv for CSV].",
        ),
        click.option(
            "--drop-empty",
            is_flag=True,
            help="Skip rows whose text or label is empty (the count is printed) instead of stopping.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func
