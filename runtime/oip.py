"""Open Inference Protocol (KServe V2) mapping: each loaded task is a model.

Inputs: `text` (BYTES, one element per row) and, for a task trained on pairs, `text_pair`
(BYTES, same count); model metadata lists the inputs the task takes (both when its arity is
unknown). BYTES elements are read by their `content_type` parameter (per input, else the
request's), as KServe and MLServer clients send it: "str" (the default: UTF-8 text) or
"base64" (base64 of UTF-8 text); any other content type is refused, never read as text.
Outputs of a classification task: `label` (BYTES [n], the top label), `score` (FP32 [n], the top
label's probability) and `scores` (FP32 [n, num_labels], in the task's label order), and for a
multi-label task `predicted` (BOOL [n, num_labels]: the labels scoring 0.5 or more, which may be
none); of a regression
task: `value` (FP32 [n]) and `score` (FP32 [n], the same value). Tensors travel as JSON or with
the binary tensor extension (`Inference-Header-Content-Length`), as off-the-shelf clients such
as `tritonclient.http` send and ask for them.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bitfit_deploy.errors import InvalidInputError, describe
from bitfit_deploy.runtime.json_body import read_json
from bitfit_deploy.runtime.results import Prediction, TaskInfo

PLATFORM = "bitfit-deploy"
MODEL_VERSION = "1"
TEXT = "text"
TEXT_PAIR = "text_pair"
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "model_repository"]
"""The V2 extensions served: binary tensors, and the model repository routes (runtime/repository.py)."""
CONTENT_TYPES = ("str", "base64")
"""How BYTES elements hold text: UTF-8 itself, or base64 of UTF-8."""


class OIPRequestError(ValueError):
    """An inference request that does not follow the protocol or this model's inputs."""


@dataclass(frozen=True)
class InferRequest:
    """A parsed inference request: the rows, its id, and which outputs to answer how."""

    items: list[str | tuple[str, str]]
    id: str | None
    outputs: list[tuple[str, bool]] | None
    """(name, binary) per requested output; None asks for every output."""
    binary_default: bool


def server_metadata(version: str) -> dict[str, Any]:
    """The body of `GET /v2`."""
    return {"name": PLATFORM, "version": version, "extensions": EXTENSIONS}


def output_specs(info: TaskInfo) -> list[dict[str, Any]]:
    """The outputs a task's model answers, as model metadata lists them."""
    if info.problem_type == "regression":
        return [_spec("value", "FP32", [-1]), _spec("score", "FP32", [-1])]
    specs = [
        _spec("label", "BYTES", [-1]),
        _spec("score", "FP32", [-1]),
        _spec("scores", "FP32", [-1, info.num_labels]),
    ]
    if info.problem_type == "multi_label":  # which labels are predicted, not only the top one
        specs.append(_spec("predicted", "BOOL", [-1, info.num_labels]))
    return specs


def model_metadata(info: TaskInfo) -> dict[str, Any]:
    """The body of `GET /v2/models/{task}`."""
    return {
        "name": info.name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": input_specs(info),
        "outputs": output_specs(info),
    }


def input_specs(info: TaskInfo) -> list[dict[str, Any]]:
    """The inputs a task's model takes: `text`, and `text_pair` unless it takes single texts."""
    names = [TEXT] if info.inputs == "single" else [TEXT, TEXT_PAIR]
    return [{**_spec(name, "BYTES", [-1]), "parameters": {"content_type": "str"}} for name in names]


def parse_infer_request(
    body: bytes, header_length: str | None, info: TaskInfo | None = None
) -> InferRequest:
    """Parse a JSON (or JSON + binary tensors) inference request into rows.

    With `info`, the inputs given must be the ones the task takes (InvalidInputError, 422).
    """
    try:
        split = len(body) if header_length is None else int(header_length)
    except ValueError:
        raise OIPRequestError(
            f"{HEADER_LENGTH} must be an integer, got {header_length!r}."
        ) from None
    if not 0 <= split <= len(body):
        raise OIPRequestError(f"{HEADER_LENGTH} {split} is outside the body of {len(body)} bytes.")
    request = read_json(body[:split], "the inference request")
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise OIPRequestError("an inference request is a JSON object with an 'inputs' list.")
    request_params = _parameters(request, "the request")
    default_type = _content_type(request_params, "str", "the request")
    binary = memoryview(body)[split:]
    columns: dict[str, list[str]] = {}
    for tensor in request["inputs"]:
        name, values, used = _read_input(tensor, binary, default_type)
        binary = binary[used:]
        if name in columns:
            raise OIPRequestError(f"input {name!r} is given twice.")
        columns[name] = values
    if len(binary):
        raise OIPRequestError(f"{len(binary)} bytes of binary data belong to no input.")
    if TEXT not in columns:
        raise OIPRequestError(f"the request lacks the BYTES input {TEXT!r} (one text per row).")
    if info is not None:
        _check_arity(info, TEXT_PAIR in columns)
    texts = columns[TEXT]
    items: list[str | tuple[str, str]] = list(texts)
    if TEXT_PAIR in columns:
        pairs = columns[TEXT_PAIR]
        if len(pairs) != len(texts):
            raise OIPRequestError(
                f"{TEXT_PAIR!r} has {len(pairs)} elements but {TEXT!r} has {len(texts)}."
            )
        items = list(zip(texts, pairs, strict=True))
    binary_default = _flag(request_params, "binary_data_output", False, "the request")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise OIPRequestError(f"the request's 'id' must be a string, got {describe(request_id)}.")
    return InferRequest(
        items,
        request_id,
        _read_outputs(request, binary_default),
        binary_default,
    )


def encode_infer_response(
    info: TaskInfo, request: InferRequest, predictions: Sequence[Prediction]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers; binary outputs follow the JSON header."""
    tensors = _output_tensors(info, predictions)
    wanted = request.outputs or [
        (spec["name"], request.binary_default) for spec in output_specs(info)
    ]
    known = {spec["name"] for spec in output_specs(info)}
    unknown = [name for name, _ in wanted if name not in known]
    if unknown:
        raise OIPRequestError(
            f"model {info.name!r} has no outputs {unknown}; it has {sorted(known)}."
        )
    outputs, chunks = [], []
    for name, binary in wanted:
        datatype, array = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = _to_binary(datatype, array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    head: dict[str, Any] = {
        "model_name": info.name,
        "model_version": MODEL_VERSION,
        "outputs": outputs,
    }
    if request.id is not None:
        head["id"] = request.id
    header = json.dumps(head).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def _spec(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


def _check_arity(info: TaskInfo, pairs: bool) -> None:
    """Refuse `text_pair` for a single-text task and its absence for a pair task."""
    if info.inputs == "single" and pairs:
        raise InvalidInputError(
            f"model {info.name!r} was trained on single texts and takes only the input {TEXT!r}; "
            f"drop {TEXT_PAIR!r}."
        )
    if info.inputs == "pair" and not pairs:
        raise InvalidInputError(
            f"model {info.name!r} was trained on pairs and takes the inputs {TEXT!r} and "
            f"{TEXT_PAIR!r} (same count); add {TEXT_PAIR!r}."
        )


def _parameters(holder: dict, where: str) -> dict:
    """The `parameters` object of a request, input or output (absent: empty); refuse other kinds."""
    params = holder.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise OIPRequestError(f"{where} has 'parameters' {describe(params)}; it must be an object.")
    return params


def _flag(params: dict, key: str, default: bool, where: str) -> bool:
    """A boolean parameter: true or false (a string "false" would otherwise read as true)."""
    value = params.get(key)
    if value is None:  # absent or null: the default, as for a null `parameters`
        return default
    if not isinstance(value, bool):
        raise OIPRequestError(
            f"{where}: parameter {key!r} must be true or false, got {describe(value)}."
        )
    return value


def _content_type(params: Any, default: str, where: str) -> str:
    """The `content_type` in a parameters object, or `default`; OIPRequestError unless known."""
    value = params.get("content_type") if isinstance(params, dict) else None
    if value is None:
        return default
    if value not in CONTENT_TYPES:
        shown = repr(value[:40]) if isinstance(value, str) else describe(value)
        raise OIPRequestError(
            f"{where} has content_type {shown}; BYTES text is read as 'str' (UTF-8) "
            "or 'base64' (base64 of UTF-8): send one of them."
        )
    return str(value)


def _read_input(tensor: Any, binary: memoryview, default_type: str) -> tuple[str, list[str], int]:
    """One input tensor's name, its texts, and how many binary bytes it used."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise OIPRequestError(
            "each input is an object with a 'name', 'shape', 'datatype' and data."
        )
    name = tensor["name"]
    if name not in (TEXT, TEXT_PAIR):
        raise OIPRequestError(f"unknown input {name!r}; the inputs are {TEXT!r} and {TEXT_PAIR!r}.")
    if tensor.get("datatype") != "BYTES":
        raise OIPRequestError(
            f"input {name!r} must have datatype BYTES, not {tensor.get('datatype')!r}."
        )
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise OIPRequestError(f"input {name!r} needs a 'shape' list of non-negative integers.")
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise OIPRequestError(
            f"input {name!r} has shape {shape}; it takes one text per row: [n] or [n, 1]."
        )
    count = math.prod(shape)
    params = _parameters(tensor, f"input {name!r}")
    content_type = _content_type(params, default_type, f"input {name!r}")
    size = params.get("binary_data_size")
    if size is not None:
        if not _is_count(size):
            raise OIPRequestError(
                f"input {name!r}: binary_data_size must be a byte count, got {describe(size)}."
            )
        if size > len(binary):
            raise OIPRequestError(
                f"input {name!r}: binary_data_size {size} exceeds the {len(binary)} bytes of "
                "binary data left after the JSON header."
            )
        elements: list[str] | list[bytes] = _bytes_elements(bytes(binary[:size]), name)
        used = size
    else:
        elements = _flatten(tensor.get("data"), name)
        used = 0
    values = [_text(e, content_type, name, i) for i, e in enumerate(elements)]
    if len(values) != count:
        raise OIPRequestError(
            f"input {name!r} has {len(values)} elements but shape {shape} says {count}."
        )
    return name, values, used


def _flatten(data: Any, name: str) -> list[str]:
    if not isinstance(data, list):
        raise OIPRequestError(f"input {name!r} needs a 'data' list (or binary data).")
    out: list[str] = []
    stack = [iter(data)]
    while stack:
        value = next(stack[-1], StopIteration)
        if value is StopIteration:
            stack.pop()
        elif isinstance(value, list):
            stack.append(iter(value))
        elif isinstance(value, str):
            out.append(value)
        else:
            raise OIPRequestError(
                f"input {name!r}: BYTES elements are strings, got {type(value).__name__}."
            )
    return out


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text(element: str | bytes, content_type: str, name: str, index: int) -> str:
    """One BYTES element as text, read by its content type; OIPRequestError if it holds none."""
    if content_type == "base64":
        try:
            element = base64.b64decode(element, validate=True)
        except (binascii.Error, ValueError):
            raise OIPRequestError(
                f"input {name!r}: element {index} is not base64, as its content_type says."
            ) from None
    if isinstance(element, str):
        return element
    try:
        return element.decode("utf-8")
    except UnicodeDecodeError:
        raise OIPRequestError(
            f"input {name!r}: element {index} is not UTF-8 text"
            + (" once base64-decoded" if content_type == "base64" else "")
            + "; this model reads text only."
        ) from None


def _bytes_elements(raw: bytes, name: str) -> list[bytes]:
    """Split the binary BYTES layout: per element a little-endian uint32 length, then the bytes."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise OIPRequestError(f"input {name!r}: binary BYTES data is truncated.")
        (n,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + n > len(raw):
            raise OIPRequestError(f"input {name!r}: binary BYTES data is truncated.")
        out.append(raw[offset : offset + n])
        offset += n
    return out


def _read_outputs(request: dict[str, Any], default: bool) -> list[tuple[str, bool]] | None:
    """The outputs asked for, each binary or not (`default`: the request's binary_data_output)."""
    outputs = request.get("outputs")
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise OIPRequestError("'outputs' must be a list of objects with a 'name'.")
    result = []
    for o in outputs:
        where = f"output {o['name']!r}"
        result.append((o["name"], _flag(_parameters(o, where), "binary_data", default, where)))
    return result


def _output_tensors(
    info: TaskInfo, predictions: Sequence[Prediction]
) -> dict[str, tuple[str, np.ndarray]]:
    score = np.array([p.score for p in predictions], dtype=np.float32)
    if info.problem_type == "regression":
        value = np.array([p.value for p in predictions], dtype=np.float32)
        return {"value": ("FP32", value), "score": ("FP32", score)}
    labels = np.array([p.label or "" for p in predictions], dtype=object)
    scores = np.array(
        [[p.scores[lab] for lab in info.labels] for p in predictions], dtype=np.float32
    )
    tensors = {
        "label": ("BYTES", labels),
        "score": ("FP32", score),
        "scores": ("FP32", scores.reshape(len(predictions), info.num_labels)),
    }
    if info.problem_type == "multi_label":
        predicted = [[lab in p.predicted_labels for lab in info.labels] for p in predictions]
        tensors["predicted"] = (
            "BOOL",
            np.array(predicted, dtype=np.bool_).reshape(len(predictions), info.num_labels),
        )
    return tensors


def _to_binary(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BOOL":
        return np.ascontiguousarray(array, dtype=np.bool_).tobytes()
    if datatype == "BYTES":
        parts = []
        for value in array.reshape(-1):
            raw = str(value).encode("utf-8")
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype="<f4").tobytes()
