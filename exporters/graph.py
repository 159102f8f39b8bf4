"""The per-row bias graph: the frozen encoder with every bias and the head as batch-shaped inputs.

Each bias-carrying Linear and LayerNorm is swapped for a module that adds a `[batch, dim]`
bias row to its bias-free output, so row i of a batch runs with task i's biases. The swapped
modules keep their weights (frozen initializers) and drop their bias parameters, so no bias
input can also exist as an initializer and be constant-folded away.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bitfit_deploy.contract import ATTENTION_MASK, HEAD_BIAS, HEAD_WEIGHT, LOGITS
from bitfit_deploy.errors import ExportError, UnsupportedArchitectureError
from bitfit_deploy.modeling import SUPPORTED_ARCHITECTURES, encoder_inputs, pool


def _row_view(bias: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`[batch, dim]` as `[batch, 1, ..., dim]`, to broadcast over `like`'s middle axes.

    Unsqueeze with constant axes: one ONNX op per bias, where a reshape to a traced shape costs a
    Shape/Gather/Concat chain at run time.
    """
    for _ in range(like.dim() - 2):
        bias = bias.unsqueeze(1)
    return bias


class RowBiasLinear(nn.Module):
    """`x @ W.T + bias[row]`: a Linear whose bias comes per batch row at run time."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight
        self.row_bias: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(x, self.weight)
        return y + _row_view(self.row_bias, y)


class RowBiasLayerNorm(nn.Module):
    """LayerNorm without its bias, then `+ bias[row]`: the decomposition that makes it per row."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.weight = norm.weight
        self.normalized_shape = norm.normalized_shape
        self.eps = norm.eps
        self.row_bias: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.layer_norm(x, self.normalized_shape, self.weight, None, self.eps)
        return y + _row_view(self.row_bias, y)


class PerRowBiasModel(nn.Module):
    """Forward(text inputs..., *biases, head.weight, head.bias) -> logits, for export."""

    def __init__(self, encoder: nn.Module, pooling: str, bias_inputs: list[str]) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(encoder).eval()
        self.pooling = pooling
        self.text_inputs = encoder_inputs(encoder)
        self.bias_inputs = list(bias_inputs)
        self._row_modules: list[nn.Module] = []
        for name in self.bias_inputs:
            module_path = name.rsplit(".", 1)[0]
            module = self.encoder.get_submodule(module_path)
            if isinstance(module, nn.Linear):
                replacement: nn.Module = RowBiasLinear(module)
            elif isinstance(module, nn.LayerNorm):
                replacement = RowBiasLayerNorm(module)
            else:
                raise UnsupportedArchitectureError(
                    f"bias {name!r} belongs to a {type(module).__name__}, which cannot take per-row "
                    "biases yet; supported: biases of Linear and LayerNorm layers."
                )
            parent_path, _, child = module_path.rpartition(".")
            setattr(
                self.encoder.get_submodule(parent_path) if parent_path else self.encoder,
                child,
                replacement,
            )
            self._row_modules.append(replacement)
        for p in self.parameters():
            p.requires_grad_(False)

    def input_names(self) -> list[str]:
        return [*self.text_inputs, *self.bias_inputs, HEAD_WEIGHT, HEAD_BIAS]

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        n_text = len(self.text_inputs)
        text = dict(zip(self.text_inputs, args[:n_text], strict=True))
        biases = args[n_text : n_text + len(self.bias_inputs)]
        head_weight, head_bias = args[n_text + len(self.bias_inputs) :]
        for module, bias in zip(self._row_modules, biases, strict=True):
            module.row_bias = bias
        hidden = self.encoder(**text).last_hidden_state
        pooled = pool(self.encoder, hidden, text[ATTENTION_MASK], self.pooling)
        return torch.matmul(head_weight, pooled.unsqueeze(-1)).squeeze(-1) + head_bias


def normalized_config(encoder: nn.Module) -> Any:
    """Optimum's normalized view of the encoder config (hidden_size, num_layers, num_attention_heads)."""
    from optimum.utils.normalized_config import NormalizedConfigManager

    model_type = getattr(encoder.config, "model_type", "?")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}."
        )
    return NormalizedConfigManager.get_normalized_config_class(model_type)(encoder.config)


def hidden_size(encoder: nn.Module) -> int:
    """The encoder's hidden width, from Optimum's normalized config (DistilBERT calls it `dim`)."""
    return int(normalized_config(encoder).hidden_size)


def dummy_text_inputs(
    encoder: nn.Module, batch: int = 2, sequence: int = 8
) -> dict[str, torch.Tensor]:
    """Tracing inputs for the encoder's text inputs (see modeling.encoder_inputs), made by Optimum.

    Optimum right-pads the attention mask, so tracing sees padding and keeps the masking ops.
    """
    from optimum.utils.input_generators import DummyTextInputGenerator

    generator = DummyTextInputGenerator(
        "feature-extraction", normalized_config(encoder), batch_size=batch, sequence_length=sequence
    )
    return {name: generator.generate(name, framework="pt") for name in encoder_inputs(encoder)}


def export_per_row_graph(
    encoder: nn.Module,
    pooling: str,
    bias_inputs: list[str],
    path: str | os.PathLike[str],
    opset: int = 17,
    num_labels: int = 2,
) -> list[str]:
    """Write the per-row bias ONNX graph to `path`, check it, and return its input names in order.

    Example: `export_per_row_graph(encoder, "mean", graph_bias_names(names, "mean"), "model.onnx")`.
    """
    model = PerRowBiasModel(encoder, pooling, bias_inputs).eval()
    params = dict(encoder.named_parameters())
    batch = 2
    args: list[torch.Tensor] = list(dummy_text_inputs(encoder, batch).values())
    args += [params[n].detach().expand(batch, -1).clone() for n in bias_inputs]
    hidden = hidden_size(encoder)
    args += [torch.zeros(batch, num_labels, hidden), torch.zeros(batch, num_labels)]
    names = model.input_names()
    dynamic_axes = {n: {0: "batch", 1: "sequence"} for n in model.text_inputs}
    dynamic_axes.update({n: {0: "batch"} for n in bias_inputs})
    dynamic_axes[HEAD_WEIGHT] = {0: "batch", 1: "num_labels"}
    dynamic_axes[HEAD_BIAS] = {0: "batch", 1: "num_labels"}
    dynamic_axes[LOGITS] = {0: "batch", 1: "num_labels"}
    trace_to_onnx(model, args, path, names, dynamic_axes, opset)
    check_runtime_inputs(path, [*bias_inputs, HEAD_WEIGHT, HEAD_BIAS])
    return names


def trace_to_onnx(
    model: nn.Module,
    args: list[torch.Tensor],
    path: str | os.PathLike[str],
    names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> None:
    """Export `model(*args)` with torch.onnx's TorchScript exporter, which keeps parameter names."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            tuple(args),
            str(path),
            input_names=names,
            output_names=[LOGITS],
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )


def check_runtime_inputs(path: str | os.PathLike[str], names: Iterable[str]) -> None:
    """Raise ExportError unless every input in `names` is a real graph input, used, and no initializer.

    An input that is also an initializer is an "overridable default" that optimizers may
    constant-fold, silently ignoring the fed value; so the saved graph AND the graph as ONNX
    Runtime optimizes it are both checked.
    """
    import onnx
    import onnxruntime as ort

    names = list(names)
    _check_graph(onnx.load(str(path), load_external_data=False).graph, names, f"{path}")
    with tempfile.TemporaryDirectory(prefix="bitfit-ortcheck-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(optimized), load_external_data=False).graph
        _check_graph(graph, names, f"{path} as optimized by ONNX Runtime")


def _check_graph(graph: Any, names: list[str], where: str) -> None:
    initializers = {t.name for t in graph.initializer}
    inputs = {i.name for i in graph.input}
    consumed = {x for node in graph.node for x in node.input}
    overridable = sorted(n for n in names if n in initializers)
    missing = sorted(n for n in names if n not in inputs)
    unused = sorted(n for n in names if n in inputs and n not in consumed)
    problems = []
    if overridable:
        problems.append(f"also initializers (their fed values could be ignored): {overridable[:5]}")
    if missing:
        problems.append(f"not graph inputs: {missing[:5]}")
    if unused:
        problems.append(f"inputs no node reads: {unused[:5]}")
    if problems:
        raise ExportError(
            f"{where}: per-row inputs are broken; " + "; ".join(problems) + ". This is an exporter "
            "bug for this model; please report it with the model's config.json."
        )
