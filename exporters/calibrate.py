"""Calibration for static int8: each quantized activation's largest |value| per channel.

Measured with ONNX Runtime on the exported fp32 graph (so exactly the graph being quantized), on
calibration texts, once with the base biases and once with each task's biases: a task exported
with the bundle is inside the calibrated range by construction. BitFit deltas move these ranges
little (measured on 8 GLUE-style tasks: at most 1.6% beyond the base's), which is why static
scales hold for tasks added later; the runtime's range probe checks each one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bitfit_deploy.commands._inputs import split_lines
from bitfit_deploy.contract import ATTENTION_MASK
from bitfit_deploy.errors import DataError
from bitfit_deploy.reading import read_regular
from bitfit_deploy.runtime.engine import HostEngine
from bitfit_deploy.runtime.registry import BiasLayout, LoadedTask
from bitfit_deploy.runtime.results import TaskInfo
from bitfit_deploy.runtime.tokenize import BundleTokenizer

SHIPPED_TEXTS = Path(__file__).with_name("calibration_texts.json")
BATCH = 32
PROBE_ROWS = 16
"""Calibration texts the runtime's range probe runs each new task on (half single, half pairs)."""

TextInput = str | tuple[str, str]


@dataclass(frozen=True)
class CalibrationTexts:
    """Texts (and pairs) to calibrate on, and where they came from (for the manifest)."""

    items: list[TextInput]
    source: str

    def probe_items(self) -> list[TextInput]:
        """A few of the texts for the range probe: singles and pairs alike, if there are both."""
        singles = [x for x in self.items if isinstance(x, str)]
        pairs = [x for x in self.items if not isinstance(x, str)]
        half = PROBE_ROWS // 2
        picked = singles[:half] + pairs[:half]
        rest = [x for x in self.items if x not in picked]
        return (picked + rest)[:PROBE_ROWS]


def read_calibration_texts(path: str | os.PathLike[str] | None = None) -> CalibrationTexts:
    """The shipped calibration texts, or `path`: UTF-8, one text per line, a tab splitting a pair."""
    if path is None:
        doc = json.loads(SHIPPED_TEXTS.read_text(encoding="utf-8"))
        items: list[TextInput] = [*doc["texts"], *(tuple(p) for p in doc["pairs"])]
        return CalibrationTexts(items, "shipped (SST-2 and TREC samples)")
    file = Path(path)
    if not os.path.lexists(file):
        raise DataError(f"calibration file {str(file)!r} does not exist; check --calibration.")
    data = read_regular(file, "calibration file", DataError)
    items = []
    for number, raw in enumerate(split_lines(data), start=1):  # as `predict --input` reads lines
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{file}:{number} is not UTF-8 text (byte {exc.start}); save the file as UTF-8, "
                "one text per line."
            ) from None
        if number == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) > 2:
            raise DataError(
                f"{file}:{number} has {len(parts)} tab-separated fields; a calibration line is "
                "one text, or a text and its pair separated by one tab."
            )
        items.append(parts[0] if len(parts) == 1 else (parts[0], parts[1]))
    if len(items) < 8:
        raise DataError(
            f"calibration file {str(file)!r} has {len(items)} non-empty lines; give at least 8 "
            "texts like the ones you will serve (a few hundred is better)."
        )
    return CalibrationTexts(items, str(file))


def placeholder_task(row: np.ndarray, hidden: int) -> LoadedTask:
    """A bias row with a zero one-label head: enough to run the graph for its activations."""
    info = TaskInfo(name="calibration", labels=["value"], problem_type="regression")
    return LoadedTask(info, row, np.zeros((1, hidden), np.float32), np.zeros(1, np.float32))


def channel_maxima(
    fp32_graph: str | os.PathLike[str],
    activations: Sequence[str],
    tokenizer: BundleTokenizer,
    texts: CalibrationTexts,
    layout: BiasLayout,
    rows: Sequence[np.ndarray],
    hidden: int,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Largest |value| per channel of each of `activations`, over real tokens of every text,
    run with each full bias row of `rows` (the base's, each task's)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(fp32_graph))
    for name in activations:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    engine = HostEngine(session, layout, hidden)
    encoded = tokenizer.encode(texts.items)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # little padding
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    maxima: dict[str, np.ndarray] = {}
    bar = tqdm(
        total=len(rows) * len(batches), desc="int8 calibration", unit="batch", disable=not progress
    )
    with bar:
        for row in rows:
            task = placeholder_task(row, hidden)
            for batch in batches:
                text = tokenizer.pad([encoded[i] for i in batch])
                outs = session.run(list(activations), engine.feeds([task] * len(batch), text))
                mask = text[ATTENTION_MASK].astype(bool) if ATTENTION_MASK in text else None
                for name, out in zip(activations, outs, strict=True):
                    per_token = mask is not None and out.shape[: mask.ndim] == mask.shape
                    values = np.abs(out[mask] if per_token else out.reshape(-1, out.shape[-1]))
                    top = values.max(axis=0)
                    maxima[name] = top if name not in maxima else np.maximum(maxima[name], top)
                bar.update()
    return maxima


def probe_inputs(tokenizer: BundleTokenizer, texts: CalibrationTexts) -> dict[str, np.ndarray]:
    """Token arrays of the probe's texts, as the graph takes them (saved in the bundle)."""
    return tokenizer.pad(tokenizer.encode(texts.probe_items()))
