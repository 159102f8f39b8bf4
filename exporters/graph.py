"""The per-row bias graph: the frozen encoder with every bias and the head as batch-shaped inputs.

Each bias-carrying Linear and LayerNorm is swapped for a module that adds a `[batch, dim]`
bias row to its bias-free output, so row i of a batch runs with task i's biases. The swapped
modules keep their weights (frozen initializers) and drop their bias parameters, so no bias
input can also exist as an initializer and be constant-folded away.
"""

from __future__ import annotations

import copy
import os
import warnings

import torch
from torch import nn

from bitfit_deploy.contract import ATTENTION_MASK, HEAD_BIAS, HEAD_WEIGHT, LOGITS
from bitfit_deploy.errors import UnsupportedArchitectureError
from bitfit_deploy.modeling import encoder_inputs, pool


def _row_view(bias: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape `[batch, dim]` to broadcast over `like`'s middle axes (`[batch, 1, ..., dim]`)."""
    shape = [bias.shape[0]] + [1] * (like.dim() - 2) + [bias.shape[-1]]
    return bias.reshape(shape)


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
            setattr(self.encoder.get_submodule(parent_path) if parent_path else self.encoder, child, replacement)
            self._row_modules.append(replacement)
        for p in self.parameters():
            p.requires_grad_(False)

    def input_names(self) -> list[str]:
        return [*self.text_inputs, *self.bias_inputs, HEAD_WEIGHT, HEAD_BIAS]

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        n_text = len(self.text_inputs)
        text = dict(zip(self.text_inputs, args[:n_text]))
        biases = args[n_text : n_text + len(self.bias_inputs)]
        head_weight, head_bias = args[n_text + len(self.bias_inputs) :]
        for module, bias in zip(self._row_modules, biases):
            module.row_bias = bias
        hidden = self.encoder(**text).last_hidden_state
        pooled = pool(self.encoder, hidden, text[ATTENTION_MASK], self.pooling)
        return torch.matmul(head_weight, pooled.unsqueeze(-1)).squeeze(-1) + head_bias


def export_per_row_graph(
    encoder: nn.Module,
    pooling: str,
    bias_inputs: list[str],
    path: str | os.PathLike[str],
    opset: int = 17,
    num_labels: int = 2,
) -> list[str]:
    """Write the per-row bias ONNX graph to `path`; return its input names in order."""
    model = PerRowBiasModel(encoder, pooling, bias_inputs).eval()
    params = dict(encoder.named_parameters())
    batch, seq = 2, 8
    dummy_text = {
        "input_ids": torch.randint(5, 100, (batch, seq)),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
        "token_type_ids": torch.zeros(batch, seq, dtype=torch.long),
    }
    args = [dummy_text[n] for n in model.text_inputs]
    args += [params[n].detach().expand(batch, -1).clone() for n in bias_inputs]
    hidden = encoder.config.hidden_size
    args += [torch.zeros(batch, num_labels, hidden), torch.zeros(batch, num_labels)]
    names = model.input_names()
    dynamic_axes = {n: {0: "batch", 1: "sequence"} for n in model.text_inputs}
    dynamic_axes.update({n: {0: "batch"} for n in bias_inputs})
    dynamic_axes[HEAD_WEIGHT] = {0: "batch", 1: "num_labels"}
    dynamic_axes[HEAD_BIAS] = {0: "batch", 1: "num_labels"}
    dynamic_axes[LOGITS] = {0: "batch", 1: "num_labels"}
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
    return names
