"""`--bake TASK`: one ordinary single-task graph with the task's biases and head as constants.

The baseline for benchmarks (what the per-row inputs cost) and a plain model for users who
want one: same text inputs as the bundle graph, output `logits` `[batch, num_labels]`.
"""

from __future__ import annotations

import os

from torch import nn

from bitfit_deploy.contract import LOGITS
from bitfit_deploy.delta import TaskDelta
from bitfit_deploy.exporters.graph import dummy_text_inputs, trace_to_onnx
from bitfit_deploy.modeling import apply_delta


class _LogitsOnly(nn.Module):
    """TaskModel returns a dict; the graph returns the logits tensor alone."""

    def __init__(self, model: nn.Module, text_inputs: list[str]) -> None:
        super().__init__()
        self.model = model
        self.text_inputs = text_inputs

    def forward(self, *text):
        return self.model(**dict(zip(self.text_inputs, text, strict=True)))["logits"]


def export_baked_graph(
    encoder: nn.Module, delta: TaskDelta, path: str | os.PathLike[str], opset: int = 17
) -> list[str]:
    """Write `delta` applied to `encoder` (modeling.apply_delta) as a plain ONNX graph; return its inputs."""
    task_model = apply_delta(encoder, delta)
    wrapper = _LogitsOnly(task_model, task_model.text_inputs).eval()
    dummy = dummy_text_inputs(encoder)
    names = list(dummy)
    dynamic_axes = {n: {0: "batch", 1: "sequence"} for n in names}
    dynamic_axes[LOGITS] = {0: "batch"}
    trace_to_onnx(wrapper, list(dummy.values()), path, names, dynamic_axes, opset)
    return names
