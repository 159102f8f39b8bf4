"""The per-task bias-delta file: safetensors tensors plus string metadata. One source of truth.

Tensors: each trained bias under its base-encoder parameter name, as *trained minus base*
(float32), and `head.weight` `[num_labels, hidden]`, `head.bias` `[num_labels]` as trained.
Metadata (safetensors string map): the keys of `DeltaMetadata`, JSON-encoded where not a string.
Imports numpy and safetensors only, so the runtime can read deltas without torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from bitfit_deploy import __version__
from bitfit_deploy._io import atomic_file
from bitfit_deploy.contract import (
    HEAD_BIAS,
    HEAD_KEYS,
    HEAD_WEIGHT,
    POOLINGS,
    PROBLEM_TYPES,
    TASK_INPUTS,
)
from bitfit_deploy.errors import DeltaFormatError
from bitfit_deploy.json_fields import mismatch, read_json_file, required_fields

FORMAT_NAME = "bitfit-delta"
FORMAT_VERSION = 1

_JSON_FIELDS = ("labels", "metrics", "training", "max_length", "format_version")


@dataclass
class DeltaMetadata:
    """What a delta says about itself; stored as the safetensors header's metadata."""

    task: str
    base_fingerprint: str
    problem_type: str
    labels: list[str]
    pooling: str
    base_model: str = ""
    """A hint where the base came from (path or name); the fingerprint is what is checked."""
    architecture: str = ""
    bias_selection: str = "all"
    max_length: int = 128
    """Tokens per input at training (special tokens included); the runtime cuts each row there."""
    inputs: str = "unknown"
    """One of `contract.TASK_INPUTS`: "single" text or "pair"; read from older files' training
    columns when the key is missing, else "unknown" (the runtime then accepts either)."""
    metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    tool_version: str = __version__

    def to_header(self) -> dict[str, str]:
        """Encode as the str->str map safetensors stores."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = json.dumps(value) if f.name in _JSON_FIELDS else str(value)
        return out

    @classmethod
    def from_header(cls, header: dict[str, str], source: str) -> DeltaMetadata:
        """Decode a header map; unknown keys are tolerated, required ones checked."""
        if header.get("format") != FORMAT_NAME:
            raise DeltaFormatError(
                f"{source} is not a bitfit-deploy delta (metadata 'format' is "
                f"{header.get('format')!r}, expected {FORMAT_NAME!r}); write deltas with "
                "`bitfit-deploy train`."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in header.items():
            if key not in known:
                continue
            try:
                values[key] = json.loads(raw) if key in _JSON_FIELDS else raw
            except json.JSONDecodeError as exc:
                raise DeltaFormatError(
                    f"{source}: metadata {key!r} is not valid JSON ({exc})."
                ) from exc
        if "inputs" not in values:
            values["inputs"] = _inputs_from_training(values.get("training"))
        missing = [k for k in required_fields(cls) if k not in values]
        if missing:
            raise DeltaFormatError(
                f"{source}: metadata lacks {', '.join(missing)}; the file is incomplete."
            )
        wrong = mismatch(cls, values)
        if wrong:
            raise DeltaFormatError(f"{source}: metadata {wrong}; the file was damaged or edited.")
        meta = cls(**values)
        if meta.format_version > FORMAT_VERSION:
            raise DeltaFormatError(
                f"{source} has delta format version {meta.format_version}, newer than this "
                f"bitfit-deploy reads ({FORMAT_VERSION}); upgrade bitfit-deploy."
            )
        if meta.problem_type not in PROBLEM_TYPES:
            raise DeltaFormatError(f"{source}: unknown problem_type {meta.problem_type!r}.")
        if meta.pooling not in POOLINGS:
            raise DeltaFormatError(f"{source}: unknown pooling {meta.pooling!r}.")
        if meta.inputs not in TASK_INPUTS:
            raise DeltaFormatError(
                f"{source}: metadata 'inputs' is {meta.inputs!r}, expected one of {TASK_INPUTS}."
            )
        if meta.max_length < 1:
            raise DeltaFormatError(
                f"{source}: metadata 'max_length' is {meta.max_length}, expected a positive integer."
            )
        return meta


def _inputs_from_training(training: Any) -> str:
    """The arity of a delta written before `inputs` was recorded: its training columns tell."""
    columns = training.get("columns") if isinstance(training, dict) else None
    if not isinstance(columns, dict) or "pair" not in columns:
        return "unknown"
    return "pair" if columns["pair"] is not None else "single"


@dataclass
class TaskDelta:
    """One task: bias deltas (trained minus base), the head, and metadata."""

    metadata: DeltaMetadata
    biases: dict[str, np.ndarray]
    head_weight: np.ndarray
    head_bias: np.ndarray

    @property
    def num_labels(self) -> int:
        return int(self.head_weight.shape[0])

    def tensors(self) -> dict[str, np.ndarray]:
        """All tensors under their file keys."""
        return {**self.biases, HEAD_WEIGHT: self.head_weight, HEAD_BIAS: self.head_bias}

    def validate(self, source: str = "delta") -> TaskDelta:
        """Check shapes, dtypes and finiteness; raise DeltaFormatError naming the culprit."""
        for name, array in self.tensors().items():
            if array.dtype != np.float32:
                raise DeltaFormatError(
                    f"{source}: tensor {name!r} is {array.dtype}, expected float32."
                )
            if not np.all(np.isfinite(array)):
                raise DeltaFormatError(f"{source}: tensor {name!r} holds NaN or infinite values.")
        for name, array in self.biases.items():
            if array.ndim != 1:
                raise DeltaFormatError(
                    f"{source}: bias {name!r} has shape {array.shape}, expected 1-D."
                )
        if self.head_weight.ndim != 2 or self.head_bias.shape != (self.head_weight.shape[0],):
            raise DeltaFormatError(
                f"{source}: head shapes {self.head_weight.shape} and {self.head_bias.shape} do not "
                "match ([num_labels, hidden] and [num_labels])."
            )
        labels = self.metadata.labels
        repeated = sorted(label for label, n in Counter(labels).items() if n > 1)
        if repeated or any(not label.strip() for label in labels):
            what = f"repeats {repeated}" if repeated else "holds an empty label"
            raise DeltaFormatError(
                f"{source}: metadata 'labels' {what}; each output needs a name of its own (its "
                "scores are keyed by it). Train the task again."
            )
        expected = 1 if self.metadata.problem_type == "regression" else len(self.metadata.labels)
        if self.num_labels != expected:
            raise DeltaFormatError(
                f"{source}: head has {self.num_labels} outputs but metadata lists "
                f"{len(self.metadata.labels)} labels for a {self.metadata.problem_type} task."
            )
        return self


def to_bytes(delta: TaskDelta) -> bytes:
    """Serialize a delta (validated) to safetensors bytes."""
    delta.validate(f"task {delta.metadata.task!r}")
    if not delta.metadata.created:
        delta.metadata.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tensors = {k: np.ascontiguousarray(v) for k, v in delta.tensors().items()}
    return save(tensors, metadata=delta.metadata.to_header())


def from_bytes(data: bytes, source: str = "delta") -> TaskDelta:
    """Parse and validate safetensors bytes as a delta."""
    try:
        tensors = load(data)
        header = _read_metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise DeltaFormatError(
            f"{source} is not a readable safetensors file ({exc}); it may be truncated or corrupt. "
            "Re-copy it or train it again."
        ) from exc
    meta = DeltaMetadata.from_header(header, source)
    missing = [k for k in HEAD_KEYS if k not in tensors]
    if missing:
        raise DeltaFormatError(f"{source} lacks the head tensors {missing}.")
    biases = {k: v for k, v in tensors.items() if k not in HEAD_KEYS}
    return TaskDelta(meta, biases, tensors[HEAD_WEIGHT], tensors[HEAD_BIAS]).validate(source)


def save_delta(delta: TaskDelta, path: str | os.PathLike[str], force: bool = False) -> Path:
    """Write a delta atomically; refuse an existing file unless `force`."""
    data = to_bytes(delta)
    with atomic_file(path, force=force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def load_delta(path: str | os.PathLike[str]) -> TaskDelta:
    """Read and validate a delta file."""
    from bitfit_deploy.reading import read_regular

    data = read_regular(path, "delta", DeltaFormatError)
    return from_bytes(data, source=repr(str(path)))


def _read_metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return dict(header.get("__metadata__", {}))


def check_fingerprint(delta: TaskDelta, base_fingerprint: str, source: str = "delta") -> None:
    """FingerprintMismatchError unless `delta` was trained on the base of `base_fingerprint`:
    checked before anything else, as no other mismatch matters for a task of another base."""
    from bitfit_deploy.errors import FingerprintMismatchError

    meta = delta.metadata
    if meta.base_fingerprint != base_fingerprint:
        raise FingerprintMismatchError(
            f"{source} (task {meta.task!r}) was trained on base {meta.base_fingerprint} but this "
            f"base/bundle is {base_fingerprint}; retrain the task on this base or export a bundle "
            f"from its base model ({meta.base_model or 'see the delta metadata'})."
        )


def check_delta_fits(
    delta: TaskDelta,
    base_fingerprint: str,
    pooling: str,
    bias_dims: dict[str, int],
    hidden_size: int,
    source: str = "delta",
) -> None:
    """Raise unless `delta` applies to this base and graph: same fingerprint, pooling, bias widths."""
    from bitfit_deploy.errors import IncompatibleTaskError

    meta = delta.metadata
    check_fingerprint(delta, base_fingerprint, source)
    if meta.pooling != pooling:
        raise IncompatibleTaskError(
            f"{source} (task {meta.task!r}) pools with {meta.pooling!r} but the graph pools with "
            f"{pooling!r}; export a bundle with --pooling {meta.pooling} or retrain with --pooling {pooling}."
        )
    for name, value in delta.biases.items():
        if name not in bias_dims:
            raise IncompatibleTaskError(
                f"{source}: bias {name!r} is not an input of this graph (pooling {pooling!r})."
            )
        if value.shape != (bias_dims[name],):
            raise IncompatibleTaskError(
                f"{source}: bias {name!r} has shape {value.shape}, the graph expects ({bias_dims[name]},)."
            )
    if delta.head_weight.shape[1] != hidden_size:
        raise IncompatibleTaskError(
            f"{source}: head width {delta.head_weight.shape[1]} differs from the model's hidden size {hidden_size}."
        )


TASK_JSON = "bitfit_task.json"
"""The task file of a folder written by `merge` or `train --method full`: delta metadata + layout."""


def read_folder_info(folder: Path) -> tuple[dict[str, Any], DeltaMetadata]:
    """A merged or full-model folder's TASK_JSON (checked as delta metadata) and its metadata."""
    info_file = folder / TASK_JSON
    if not info_file.is_file():
        raise DeltaFormatError(
            f"{str(folder)!r} lacks {TASK_JSON}; it was not written by bitfit-deploy."
        )
    info = read_json_file(info_file, DeltaFormatError, "merge the delta again")
    known = {f.name for f in dataclasses.fields(DeltaMetadata)}
    values = {k: v for k, v in info.items() if k in known} if isinstance(info, dict) else None
    wrong = "it is not a JSON object" if values is None else mismatch(DeltaMetadata, values)
    missing = (
        [] if values is None else [k for k in required_fields(DeltaMetadata) if k not in values]
    )
    if wrong or missing:
        why = wrong or f"it lacks {', '.join(missing)}"
        raise DeltaFormatError(
            f"{info_file}: {why}; the folder was damaged or edited. Merge the delta again."
        )
    return info, DeltaMetadata(**values)
