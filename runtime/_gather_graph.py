"""A tiny ONNX graph of Gather nodes, written as protobuf bytes without the `onnx` package.

The CUDA path keeps one `[slots, dim]` table per bias (and the head) on the device and
gathers a batch's rows there: `table[rows]` for every table, in one run of this graph.
The runtime may not depend on `onnx`, and the graph is fixed in form, so it is encoded here.
"""

from __future__ import annotations

from collections.abc import Sequence

FLOAT = 1
INT64 = 7
ROWS = "rows"
TABLE_PREFIX = "table/"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _field_int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _value_info(name: str, elem_type: int, dims: Sequence[int | str]) -> bytes:
    shape = b"".join(
        _field_bytes(1, _field_bytes(2, d.encode()) if isinstance(d, str) else _field_int(1, d))
        for d in dims
    )
    tensor_type = _field_int(1, elem_type) + _field_bytes(2, shape)
    return _field_bytes(1, name.encode()) + _field_bytes(2, _field_bytes(1, tensor_type))


def gather_graph(tables: Sequence[tuple[str, Sequence[int]]], opset: int = 13) -> bytes:
    """Model bytes: inputs `rows` [batch] and `table/NAME` [slots, *dims]; outputs NAME [batch, *dims]."""
    nodes, inputs, outputs = [], [_value_info(ROWS, INT64, ["batch"])], []
    for name, dims in tables:
        table = TABLE_PREFIX + name
        inputs.append(_value_info(table, FLOAT, ["slots", *dims]))
        outputs.append(_value_info(name, FLOAT, ["batch", *dims]))
        nodes.append(
            _field_bytes(1, table.encode())
            + _field_bytes(1, ROWS.encode())
            + _field_bytes(2, name.encode())
            + _field_bytes(3, f"gather/{name}".encode())
            + _field_bytes(4, b"Gather")
        )
    graph = b"".join(_field_bytes(1, n) for n in nodes) + _field_bytes(2, b"bitfit_gather")
    graph += b"".join(_field_bytes(11, i) for i in inputs) + b"".join(
        _field_bytes(12, o) for o in outputs
    )
    opset_import = _field_bytes(1, b"") + _field_int(2, opset)
    return (
        _field_int(1, 8)  # ir_version 8
        + _field_bytes(2, b"bitfit-deploy")
        + _field_bytes(7, graph)
        + _field_bytes(8, opset_import)
    )
