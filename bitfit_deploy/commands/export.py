"""`bitfit-deploy export --onnx`: write a per-row bias bundle of the base model."""

from __future__ import annotations

from pathlib import Path

import click

from bitfit_deploy.commands._options import POOLING_CHOICES, model_option
from bitfit_deploy.manifest import INT8_ACTIVATIONS


@click.command()
@click.option(
    "--onnx",
    "onnx_format",
    is_flag=True,
    required=True,
    help="Export an ONNX bundle (the one format for now).",
)
@model_option
@click.option(
    "--output", "-o", type=click.Path(path_type=Path), required=True, help="Bundle folder to write."
)
@click.option(
    "--task",
    "tasks",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Delta file to ship in the bundle (repeatable).",
)
@click.option(
    "--pooling",
    type=click.Choice(POOLING_CHOICES),
    default="auto",
    show_default=True,
    help="Pooling of the graph; auto follows the tasks, else the base.",
)
@click.option(
    "--max-length",
    type=int,
    default=None,
    help="Tokens per input before truncation [default: the base's].",
)
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset.")
@click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    default=None,
    help="Also write model.int8.onnx: int8 frozen weights and activations, batch-invariant.",
)
@click.option(
    "--int8-activations",
    type=click.Choice(INT8_ACTIVATIONS),
    default="static",
    show_default=True,
    help="static: scales calibrated at export (fastest; the runtime checks each new task's "
    "ranges); per-token: scales computed per token at run time (nothing to calibrate, ~20% slower).",
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Static int8: UTF-8 texts like those you serve, one per line (a tab splits a pair) "
    "[default: shipped SST-2 and TREC sentences].",
)
@click.option(
    "--bake",
    "bake",
    multiple=True,
    metavar="TASK",
    help="Also write baked/TASK.onnx, a plain single-task graph, for a task given by --task (repeatable).",
)
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def command(
    onnx_format: bool,
    model: str | None,
    output: Path,
    tasks: tuple[str, ...],
    pooling: str,
    max_length: int | None,
    opset: int,
    quantize: str | None,
    int8_activations: str,
    calibration: str | None,
    bake: tuple[str, ...],
    force: bool,
) -> None:
    """Write ONE ONNX graph in which every bias and the task head are per-row inputs."""
    from bitfit_deploy.exporters.bundle import export_bundle

    manifest = export_bundle(
        output,
        model=model,
        tasks=list(tasks),
        pooling=pooling,
        max_length=max_length,
        opset=opset,
        force=force,
        quantize=quantize,
        bake=list(bake),
        int8_activations=int8_activations,
        calibration=calibration,
    )
    baked = f", baked {', '.join(manifest.baked)}" if manifest.baked else ""
    click.echo(
        f"wrote {output}: {len(manifest.bias_inputs)} bias inputs, pooling {manifest.pooling}, "
        f"{len(manifest.tasks)} task(s), variants {', '.join(manifest.variants)}{baked}"
    )
    int8 = manifest.quantization.get("int8")
    if int8 and int8.get("activations") == "static":
        cal = int8["calibration"]
        click.echo(
            f"int8: static activation scales calibrated on {cal['texts']} texts ({cal['source']}) "
            f"with the base and {len(cal['tasks'])} task(s); tasks loaded later are range-checked"
        )
