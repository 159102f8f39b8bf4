"""`--quantize int8`: int8 frozen weights, activations quantized per token so rows never interact.

Quantized: the MatMuls whose weight is an initializer (the frozen projections) and the
embedding-table Gathers. Everything fed per row stays float32: the bias Adds, the attention
products between activations and the head MatMul (its weight is an input), so every task
keeps its exact biases and head.

Weights: symmetric int8, one scale per output channel (with one scale per tensor, the FFN output
projections of all-MiniLM-L6-v2, a few outlier columns, cost up to 7% cosine similarity of the
pooled embedding on SST-2 sentences; per channel, under 2%).

Activations: symmetric, one scale per token (`max|x| / 127` over the hidden dimension), as uint8
with the fixed zero point 128. ONNX Runtime's dynamic quantization uses one scale for the whole
`[batch, sequence, hidden]` tensor, so one row's text (or task, or padding) moved another row's
scores; per token, a row's answer is the same whatever shares its run. ONNX Runtime's CPU
`MatMulInteger` takes only a scalar activation zero point, hence symmetric scales. The scale is
computed once per activation tensor and shared by the MatMuls that read it (query, key, value).
Plain ONNX ops only (Abs, ReduceMax, QuantizeLinear and DequantizeLinear per axis,
MatMulInteger), so any runtime that runs ONNX runs it.

On x86 CPUs without VNNI, ONNX Runtime's uint8 x int8 kernels may saturate 16-bit sums; on CPUs
with VNNI or AMX they do not. Check accuracy with `bitfit-deploy eval --variant int8` on such CPUs.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from bitfit_deploy.errors import ExportError

QUANTIZATIONS = ("int8",)
_ZERO_POINT = 128  # uint8 activations centred on 128: symmetric, as MatMulInteger needs


def frozen_weight_nodes(model_path: str | os.PathLike[str]) -> list[str]:
    """Names of the MatMuls with an initializer weight and the Gathers from an initializer table."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return [
        n.name
        for n in graph.node
        if (n.op_type == "MatMul" and n.input[1] in initializers)
        or (n.op_type == "Gather" and n.input[0] in initializers)
    ]


def quantize_int8(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Write `target`: `source` with int8 frozen weights and per-token activation scales."""
    import onnx

    if not frozen_weight_nodes(source):
        raise ExportError(f"{source} has no frozen MatMul or embedding weights to quantize.")
    with tempfile.TemporaryDirectory(dir=Path(target).parent) as tmp:
        embedded = Path(tmp) / "gather_int8.onnx"
        _quantize_embedding_tables(Path(source), embedded)
        model = onnx.load(str(embedded))
    quantize_matmuls_per_token(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return Path(target)


def _quantize_embedding_tables(source: Path, target: Path) -> None:
    """Embedding Gathers -> int8 tables (weight-only, so exact per row) via ORT's quantizer."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    gathers = [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] in initializers]
    if not gathers:
        onnx.save(onnx.load(str(source)), str(target))
        return
    # The quantizer logs a pre-processing hint at WARNING for every model; it does not apply here.
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            source,
            target,
            op_types_to_quantize=["Gather"],
            nodes_to_quantize=gathers,
            per_channel=True,
            weight_type=QuantType.QInt8,
        )
    finally:
        logger.setLevel(level)


def quantize_matmuls_per_token(model) -> int:  # noqa: ANN001 (onnx.ModelProto; onnx is optional)
    """Rewrite, in place, every MatMul with a 2-D initializer weight as per-token int8.

    Returns the number of MatMuls rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    targets = [
        n
        for n in graph.node
        if n.op_type == "MatMul" and n.input[1] in weights and len(weights[n.input[1]].dims) == 2
    ]
    if not targets:
        return 0
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 15:
        raise ExportError(
            f"int8 export needs ONNX opset 15 or newer; this graph has {opset}. Export with --opset 17."
        )
    consts = _Consts(graph, opset)
    quantized_inputs: dict[str, tuple[str, str, str]] = {}
    new_nodes = []
    for node in graph.node:
        if node not in targets:
            new_nodes.append(node)
            continue
        x, w_name = node.input[0], node.input[1]
        if x not in quantized_inputs:
            quantized_inputs[x] = _emit_row_quantization(
                x, len(quantized_inputs), new_nodes, consts
            )
        q, scale, lead_shape = quantized_inputs[x]
        w = numpy_helper.to_array(weights[w_name]).astype(np.float32)
        w_scale = np.maximum(np.abs(w).max(axis=0), np.finfo(np.float32).tiny) / 127.0
        w_q = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
        p = f"{node.name or node.output[0]}_int8"
        graph.initializer.extend(
            [
                numpy_helper.from_array(w_q, f"{p}/W_quantized"),
                numpy_helper.from_array(w_scale.astype(np.float32), f"{p}/W_scale"),
                numpy_helper.from_array(np.array([w.shape[1]], np.int64), f"{p}/width"),
            ]
        )
        new_nodes += [
            helper.make_node(
                "MatMulIntegerToFloat",
                [q, f"{p}/W_quantized", consts.one, f"{p}/W_scale", consts.zero_point],
                [f"{p}/cols"],
                domain="com.microsoft",
            ),
            helper.make_node("Mul", [f"{p}/cols", scale], [f"{p}/flat"]),
            helper.make_node("Concat", [lead_shape, f"{p}/width"], [f"{p}/shape"], axis=0),
            helper.make_node("Reshape", [f"{p}/flat", f"{p}/shape"], [node.output[0]]),
        ]
    del graph.node[:]
    graph.node.extend(new_nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return len(targets)


class _Consts:
    """The few constant initializers the per-token quantization shares across the graph."""

    def __init__(self, graph, opset: int) -> None:  # noqa: ANN001
        from onnx import numpy_helper

        self.opset = opset
        self.axis1 = "int8/axis1"
        self.zero_point = "int8/zero_point"
        self.zero_point_f = "int8/zero_point_f"
        self.flat = "int8/flat"  # -1: every leading axis folds into one row axis
        self.inv127 = "int8/inv127"
        self.tiny = "int8/tiny"
        self.zero = "int8/zero"
        self.one = "int8/one"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(_ZERO_POINT, np.uint8), self.zero_point),
                numpy_helper.from_array(
                    np.array(float(_ZERO_POINT), np.float32), self.zero_point_f
                ),
                numpy_helper.from_array(np.array(-1, np.int64).reshape(1), self.flat),
                numpy_helper.from_array(np.array(1.0 / 127.0, np.float32), self.inv127),
                numpy_helper.from_array(np.array(np.finfo(np.float32).tiny, np.float32), self.tiny),
                numpy_helper.from_array(np.array(0.0, np.float32), self.zero),
                numpy_helper.from_array(np.array([1], np.int64), self.axis1),
                numpy_helper.from_array(np.array(1.0, np.float32), self.one),
            ]
        )


def _emit_row_quantization(
    x: str, index: int, nodes: list, consts: _Consts
) -> tuple[str, str, str]:
    """Append nodes quantizing `x` [..., K] as uint8 rows [N, K] with one scale per row.

    Returns (quantized rows, per-row scales [N], the leading shape of `x` for the way back).
    """
    from onnx import TensorProto, helper

    p = f"int8/act{index}"
    nodes += [
        helper.make_node("Shape", [x], [f"{p}/lead"], end=-1),
        helper.make_node("Shape", [x], [f"{p}/depth"], start=-1),
        helper.make_node("Concat", [consts.flat, f"{p}/depth"], [f"{p}/flat_shape"], axis=0),
        helper.make_node("Reshape", [x, f"{p}/flat_shape"], [f"{p}/rows"]),
        _reduce_rows("ReduceMax", f"{p}/rows", f"{p}/hi", consts),
        _reduce_rows("ReduceMin", f"{p}/rows", f"{p}/lo", consts),
        helper.make_node("Neg", [f"{p}/lo"], [f"{p}/neg_lo"]),
        helper.make_node("Max", [f"{p}/hi", f"{p}/neg_lo"], [f"{p}/max"]),
        helper.make_node("Max", [f"{p}/max", consts.tiny], [f"{p}/max_safe"]),
        helper.make_node("Mul", [f"{p}/max_safe", consts.inv127], [f"{p}/scale"]),
        # QuantizeLinear wants a zero point of the scale's shape: 128 for every row.
        helper.make_node("Mul", [f"{p}/scale", consts.zero], [f"{p}/zeros"]),
        helper.make_node("Add", [f"{p}/zeros", consts.zero_point_f], [f"{p}/zp_f"]),
        helper.make_node("Cast", [f"{p}/zp_f"], [f"{p}/zp"], to=TensorProto.UINT8),
        helper.make_node(
            "QuantizeLinear", [f"{p}/rows", f"{p}/scale", f"{p}/zp"], [f"{p}/q"], axis=0
        ),
        helper.make_node("Unsqueeze", [f"{p}/scale", consts.axis1], [f"{p}/scale_col"]),
    ]
    return f"{p}/q", f"{p}/scale_col", f"{p}/lead"


def _reduce_rows(op: str, x: str, out: str, consts: _Consts):  # noqa: ANN202
    """ReduceMax/ReduceMin over axis 1: an attribute before opset 18, an input from 18 on."""
    from onnx import helper

    if consts.opset >= 18:
        return helper.make_node(op, [x, consts.axis1], [out], keepdims=0)
    return helper.make_node(op, [x], [out], axes=[1], keepdims=0)
