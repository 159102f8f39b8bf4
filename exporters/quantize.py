"""`--quantize int8`: int8 frozen weights, activations quantized so that rows never interact.

Quantized: the MatMuls whose weight is an initializer (the frozen projections) and the
embedding-table Gathers. Everything fed per row stays float32: the bias Adds, the attention
products between activations and the head MatMul (its weight is an input), so every task
keeps its exact biases and head.

Weights: symmetric int8, one scale per output channel (with one scale per tensor, the FFN output
projections of all-MiniLM-L6-v2, a few outlier columns, cost up to 7% cosine similarity of the
pooled embedding on SST-2 sentences; per channel, under 2%).

Activations, two schemes (`INT8_ACTIVATIONS`); neither lets one row's text, task or padding move
another row's scores, as ONNX Runtime's dynamic quantization (one scale per batch tensor) did:

- "static" (default): fixed scales calibrated at export on calibration texts, run with the base
  biases and every task given to the export. Outlier channels are first smoothed into the weights
  (SmoothQuant, alpha 0.8: x/c times c*W), so one per-tensor scale serves every channel; values
  beyond the calibrated range clip. Only a Mul and a QuantizeLinear before each int8 GEMM: the
  fastest graph. A task added later is checked against the calibrated ranges by the runtime
  (`INT8_PROBE_FILE`, see `bitfit_deploy.runtime.int8_ranges`).
- "per-token": one symmetric scale per token (`max|x| / 127`), computed in the graph: nothing to
  calibrate and no range to leave, at the cost of a reduction, a rescale and a Mul per GEMM
  (measured: about 20% slower than static on MiniLM).

Activations are uint8 with the fixed zero point 128 (symmetric): ONNX Runtime's CPU
`MatMulInteger` takes only a scalar activation zero point.

On x86 CPUs without VNNI, ONNX Runtime's uint8 x int8 kernels may saturate 16-bit sums; on CPUs
with VNNI or AMX they do not. Check accuracy with `bitfit-deploy eval --variant int8` on such CPUs.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bitfit_deploy.contract import TEXT_INPUTS
from bitfit_deploy.errors import ExportError, ExportOptionError
from bitfit_deploy.manifest import CLIPPED_OUTPUT_PREFIX, INT8_ACTIVATIONS

QUANTIZATIONS = ("int8",)
INT8_MIN_OPSET = 15
"""The int8 graph's per-axis QuantizeLinear and reductions need this ONNX opset or newer."""
SMOOTHING_ALPHA = 0.8
"""How much of each activation channel's range moves into the weights. Measured on 8 tasks
(calibrated on the shipped samples, base biases only): 0.8-1.0 keep every task within 0.5 points
of fp32; 0.5 loses up to 25 points of STS-B Pearson (the weights' outlier rows then quantize badly)."""
SMOOTH_SPREAD = 4.0
"""Smooth only activations with outlier channels. In all-MiniLM-L6-v2 the LayerNorm and GELU
outputs have channels 5-15x the median range (smoothed); the attention outputs stay within 3x."""
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


def frozen_matmul_inputs(model_path: str | os.PathLike[str]) -> list[str]:
    """The activations the int8 graph quantizes: inputs of MatMuls with a 2-D initializer weight."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return list(dict.fromkeys(n.input[0] for n in _frozen_matmuls(graph)))


def check_int8_activations(activations: str) -> None:
    """ExportOptionError unless `activations` is one of INT8_ACTIVATIONS."""
    if activations not in INT8_ACTIVATIONS:
        raise ExportOptionError(
            f"unknown int8 activation scheme {activations!r}; choose one of "
            f"{', '.join(INT8_ACTIVATIONS)}."
        )


def quantize_int8(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    activations: str = "per-token",
    channel_max: Mapping[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Write `target`: `source` with int8 frozen weights and `activations` scales.

    "static" needs `channel_max`: for each of `frozen_matmul_inputs(source)`, the largest |value|
    of each channel seen in calibration. Returns, for "static", the smoothed tensors that are
    quantized and the value at which each clips (the range probe's contract); {} for "per-token".
    """
    import onnx

    check_int8_activations(activations)
    if not frozen_weight_nodes(source):
        raise ExportError(f"{source} has no frozen MatMul or embedding weights to quantize.")
    with tempfile.TemporaryDirectory(dir=Path(target).parent) as tmp:
        embedded = Path(tmp) / "gather_int8.onnx"
        _quantize_embedding_tables(Path(source), embedded)
        model = onnx.load(str(embedded))
    clips: dict[str, float] = {}
    if activations == "static":
        if channel_max is None:
            raise ExportError("static int8 activations need calibration ranges (channel_max).")
        clips = quantize_matmuls_static(model, channel_max)
    else:
        quantize_matmuls_per_token(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return clips


def write_range_probe(
    int8_graph: str | os.PathLike[str], probe: str | os.PathLike[str], clips: Mapping[str, float]
) -> dict[str, float]:
    """Write `probe`: the int8 graph plus, per quantized tensor, each row's share of values that
    clip (beyond the calibrated range).

    The probe shares the int8 graph's external weights file (same folder), so it costs only its
    protobuf. ONNX Runtime runs every node whatever outputs are asked for, hence a separate graph:
    serving never pays for the reductions. Run it on unpadded rows (padding would count). Returns
    output name -> the value its tensor clips at (for the manifest).
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(int8_graph), load_external_data=False)
    graph = model.graph
    opset = _opset(model)
    if opset >= 18:  # the reductions' axes became an input
        graph.initializer.append(helper.make_tensor("probe/axes", TensorProto.INT64, [1], [1]))
    outputs = {}
    for k, (tensor, clip) in enumerate(clips.items()):
        name, rows = f"{CLIPPED_OUTPUT_PREFIX}{k}", f"probe/rows{k}"
        graph.initializer.append(
            helper.make_tensor(f"probe/clip{k}", TensorProto.FLOAT, [], [clip])
        )
        graph.node.extend(
            [
                helper.make_node("Abs", [tensor], [f"probe/abs{k}"]),
                helper.make_node("Flatten", [f"probe/abs{k}"], [rows], axis=1),
                helper.make_node("Greater", [rows, f"probe/clip{k}"], [f"probe/gt{k}"]),
                helper.make_node(
                    "Cast", [f"probe/gt{k}"], [f"probe/over{k}"], to=TensorProto.FLOAT
                ),
                _reduce_axis1("ReduceMean", f"probe/over{k}", name, opset, "probe/axes"),
            ]
        )
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch"]))
        outputs[name] = float(clip)
    onnx.save(model, str(probe))
    return outputs


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


def _reduce_axis1(op: str, x: str, out: str, opset: int, axes: str):  # noqa: ANN202
    """`op` over axis 1 of `x`, keepdims 0. The axes are an attribute before opset 18 and an
    input from 18 on: `axes` names an int64 initializer holding [1]."""
    from onnx import helper

    if opset >= 18:
        return helper.make_node(op, [x, axes], [out], keepdims=0)
    return helper.make_node(op, [x], [out], axes=[1], keepdims=0)


def _frozen_matmuls(graph) -> list:  # noqa: ANN001
    """MatMuls of a text-derived activation by a 2-D initializer weight: the ones to quantize.

    A MatMul that reads no text (a bias row alone) is never quantized: a task's biases have no
    calibrated range.
    """
    weights = {t.name: t for t in graph.initializer}
    from_text = {i.name for i in graph.input if i.name in TEXT_INPUTS}
    for node in graph.node:  # ONNX graphs are topologically sorted
        if any(i in from_text for i in node.input):
            from_text.update(node.output)
    return [
        n
        for n in graph.node
        if n.op_type == "MatMul"
        and n.input[0] in from_text
        and n.input[1] in weights
        and len(weights[n.input[1]].dims) == 2
    ]


def _opset(model) -> int:  # noqa: ANN001
    """The model's default-domain ONNX opset."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _check_opset(model) -> int:  # noqa: ANN001
    opset = _opset(model)
    if opset < INT8_MIN_OPSET:
        raise ExportError(
            f"int8 export needs ONNX opset {INT8_MIN_OPSET} or newer; this graph has {opset}. "
            "Export with --opset 17."
        )
    return opset


def _int8_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 `[K, N]` weights with one scale per output channel."""
    scale = np.maximum(np.abs(w).max(axis=0), np.finfo(np.float32).tiny) / 127.0
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


def smoothing_factors(channel_max: np.ndarray, weights: list[np.ndarray]) -> np.ndarray | None:
    """SmoothQuant's per-channel divisors c = max|x|^a / max|W|^(1-a), a = SMOOTHING_ALPHA.

    None (no smoothing, one Mul less) when no channel stands out: largest channel range under
    SMOOTH_SPREAD times the median one.
    """
    if channel_max.max() < SMOOTH_SPREAD * max(float(np.median(channel_max)), 1e-12):
        return None
    w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    floor = np.float32(1e-5)
    c = np.maximum(channel_max, floor) ** SMOOTHING_ALPHA / np.maximum(w_max, floor) ** (
        1 - SMOOTHING_ALPHA
    )
    return c.astype(np.float32)


def quantize_matmuls_static(model, channel_max: Mapping[str, np.ndarray]) -> dict[str, float]:  # noqa: ANN001
    """Rewrite, in place, every frozen MatMul as int8 with calibrated, smoothed static scales.

    x -> Mul(1/c) -> QuantizeLinear(s, 128) -> MatMulIntegerToFloat(c*W int8, s, w_scale): each
    element is quantized on its own, so rows never interact. Returns smoothed tensor -> clip value.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    _check_opset(model)
    targets = _frozen_matmuls(graph)
    weights = {t.name: t for t in graph.initializer}
    readers: dict[str, list] = {}
    for node in targets:
        readers.setdefault(node.input[0], []).append(node)
    missing = [x for x in readers if x not in channel_max]
    if missing:
        raise ExportError(
            f"no calibration range for {missing[:3]}; calibrate the fp32 graph first."
        )
    zero_point = "int8/zero_point"
    graph.initializer.append(numpy_helper.from_array(np.array(_ZERO_POINT, np.uint8), zero_point))
    plan: dict[str, tuple[str, str, np.ndarray]] = {}
    clips: dict[str, float] = {}
    new_nodes = []
    for node in graph.node:
        x = node.input[0] if node in targets else None
        if x is None:
            new_nodes.append(node)
            continue
        if x not in plan:
            p = f"int8/act{len(plan)}"
            ws = [numpy_helper.to_array(weights[n.input[1]]).astype(np.float32) for n in readers[x]]
            ranges = np.asarray(channel_max[x], np.float32)
            c = smoothing_factors(ranges, ws)
            smoothed = x if c is None else f"{p}/smooth"
            if c is None:
                c = np.ones_like(ranges)
            else:
                graph.initializer.append(
                    numpy_helper.from_array((1.0 / c).astype(np.float32), f"{p}/inv_smooth")
                )
                new_nodes.append(helper.make_node("Mul", [x, f"{p}/inv_smooth"], [smoothed]))
            clip = float(np.max(ranges / c))
            scale = np.float32(max(clip, float(np.finfo(np.float32).tiny)) / 127.0)
            graph.initializer.append(numpy_helper.from_array(np.array(scale), f"{p}/scale"))
            new_nodes.append(
                helper.make_node("QuantizeLinear", [smoothed, f"{p}/scale", zero_point], [f"{p}/q"])
            )
            plan[x] = (f"{p}/q", f"{p}/scale", c)
            clips[smoothed] = clip
        q, scale_name, c = plan[x]
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32) * c[:, None]
        new_nodes.append(_int8_matmul(graph, node, w, q, scale_name, zero_point, node.output[0]))
    _replace_nodes(model, new_nodes)
    return clips


def _int8_matmul(graph, node, w: np.ndarray, q: str, a_scale: str, zero_point: str, out: str):  # noqa: ANN001, ANN202
    """Add `node`'s weight `w` as per-channel int8 initializers; return the MatMulIntegerToFloat
    of the quantized activation `q` (scale `a_scale`, zero point `zero_point`) writing `out`."""
    from onnx import helper, numpy_helper

    w_q, w_scale = _int8_weight(w)
    p = f"{node.name or node.output[0]}_int8"
    graph.initializer.extend(
        [
            numpy_helper.from_array(w_q, f"{p}/W_quantized"),
            numpy_helper.from_array(w_scale, f"{p}/W_scale"),
        ]
    )
    return helper.make_node(
        "MatMulIntegerToFloat",
        [q, f"{p}/W_quantized", a_scale, f"{p}/W_scale", zero_point],
        [out],
        domain="com.microsoft",
    )


def _replace_nodes(model, nodes: list) -> None:  # noqa: ANN001
    """Install `nodes`, declare the com.microsoft domain and drop initializers no node reads."""
    from onnx import helper

    graph = model.graph
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def quantize_matmuls_per_token(model) -> int:  # noqa: ANN001 (onnx.ModelProto; onnx is optional)
    """Rewrite, in place, every MatMul with a 2-D initializer weight as per-token int8.

    Returns the number of MatMuls rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    targets = _frozen_matmuls(graph)
    if not targets:
        return 0
    opset = _check_opset(model)
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
        p = f"{node.name or node.output[0]}_int8"
        graph.initializer.append(
            numpy_helper.from_array(np.array([w.shape[1]], np.int64), f"{p}/width")
        )
        new_nodes += [
            _int8_matmul(graph, node, w, q, consts.one, consts.zero_point, f"{p}/cols"),
            helper.make_node("Mul", [f"{p}/cols", scale], [f"{p}/flat"]),
            helper.make_node("Concat", [lead_shape, f"{p}/width"], [f"{p}/shape"], axis=0),
            helper.make_node("Reshape", [f"{p}/flat", f"{p}/shape"], [node.output[0]]),
        ]
    _replace_nodes(model, new_nodes)
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
        _reduce_axis1("ReduceMax", f"{p}/rows", f"{p}/hi", consts.opset, consts.axis1),
        _reduce_axis1("ReduceMin", f"{p}/rows", f"{p}/lo", consts.opset, consts.axis1),
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
