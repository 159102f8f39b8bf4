"""`bitfit-deploy inspect`: print what a delta file (or a full/merged model folder) says about itself."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from bitfit_deploy.delta import TASK_JSON, read_folder_info
from bitfit_deploy.errors import DeltaFormatError
from bitfit_deploy.fingerprint import short


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
def command(path: Path, as_json: bool) -> None:
    """Show a delta's task, labels, base fingerprint, biases, metrics and training configuration."""
    info = read_info(path)
    click.echo(json.dumps(info, indent=2) if as_json else describe(info))


def read_info(path: Path) -> dict[str, Any]:
    """The metadata of a delta file, or of a folder written by `train --method full` or `merge`."""
    if path.is_dir():
        if not (path / TASK_JSON).is_file():
            raise DeltaFormatError(
                f"{str(path)!r} is a folder without {TASK_JSON}; pass a delta file."
            )
        info, _ = read_folder_info(path)  # checked as a delta's metadata
        return {"path": str(path), "kind": "model folder", **info}
    from bitfit_deploy.delta import load_delta

    delta = load_delta(path)
    info = {
        "path": str(path),
        "kind": "bias delta",
        "size_bytes": path.stat().st_size,
        **dataclasses.asdict(delta.metadata),
    }
    info["tensors"] = {
        "biases": len(delta.biases),
        "bias_parameters": int(sum(v.size for v in delta.biases.values())),
        "head": list(delta.head_weight.shape),
        "largest_bias_change": float(
            max((abs(v).max() for v in delta.biases.values()), default=0.0)
        ),
        "bias_names": sorted(delta.biases),
    }
    return info


def describe(info: dict[str, Any]) -> str:
    """A readable multi-line summary of `read_info`'s dict."""
    lines = [
        f"{info['path']}  ({info['kind']}"
        + (f", {info['size_bytes'] / 1024:.1f} KB)" if "size_bytes" in info else ")")
    ]
    labels = info.get("labels", [])

    def row(key: str, value: Any) -> None:
        lines.append(f"  {key:<16}{value}")

    row("task", info.get("task"))
    row("problem type", info.get("problem_type"))
    row("labels", ", ".join(map(str, labels)) if isinstance(labels, list) else labels)
    row("pooling", info.get("pooling"))
    row("max length", info.get("max_length"))
    if "inputs" in info:
        row("inputs", {"single": "one text", "pair": "text pairs"}.get(info["inputs"], "either"))
    row("base model", f"{info.get('base_model')} ({info.get('architecture')})")
    row("fingerprint", short(str(info.get("base_fingerprint", ""))))
    row("bias selection", info.get("bias_selection"))
    tensors = info.get("tensors")
    if tensors:
        row(
            "tensors",
            f"{tensors['biases']} bias vectors ({tensors['bias_parameters']:,} values), "
            f"head {tensors['head'][0]}x{tensors['head'][1]}",
        )
        row("largest change", f"{tensors['largest_bias_change']:.4g}")
    metrics = info.get("metrics") or {}
    row(
        "eval metrics",
        ", ".join(f"{k} {float(v):.4f}" for k, v in metrics.items()) or "none (no eval data)",
    )
    training = info.get("training") or {}
    keys = (
        "method",
        "epochs",
        "max_steps",
        "lr",
        "batch_size",
        "seed",
        "train_rows",
        "eval_rows",
        "best_epoch",
        "steps",
        "trainable_parameters",
    )
    shown = {k: training[k] for k in keys if training.get(k) is not None}
    row("training", ", ".join(f"{k}={v}" for k, v in shown.items()))
    if training.get("train"):
        row(
            "data",
            f"train {training['train']}"
            + (f", eval {training['eval']}" if training.get("eval") else ""),
        )
    row(
        "created",
        f"{info.get('created')} by bitfit-deploy {info.get('tool_version')}"
        f" (format {info.get('format')} v{info.get('format_version')})",
    )
    return "\n".join(lines)
