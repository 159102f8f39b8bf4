"""What the runtime returns: per-input predictions and per-task descriptions."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TaskInfo:
    """A loaded task as callers see it: its labels, problem type, pooling and training metrics."""

    name: str
    labels: list[str]
    problem_type: str
    metrics: dict[str, float] = field(default_factory=dict)
    pooling: str = "mean"
    num_labels: int = 1
    inputs: str = "unknown"
    """"single" (one text per input), "pair" ((text, text_pair)) or "unknown" (either)."""
    max_length: int = 0
    """Tokens each input is cut at: the task's training length capped by the bundle's (0: the bundle's)."""
    int8_clipped: float | None = None
    """Static int8 runtimes only: the share of quantized activation values beyond the calibrated
    range when this task runs the bundle's calibration texts (worst tensor); else None."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Prediction:
    """One input's result: top label and score, every label's score, or the regression value."""

    task: str
    label: str | None
    """Top label; None for regression."""
    score: float
    """The top label's probability (softmax; sigmoid for multi-label); the value for regression."""
    scores: dict[str, float]
    """Every label's score; empty for regression."""
    value: float | None
    """Regression output, else None."""
    predicted_labels: list[str]
    """Multi-label: labels with sigmoid >= 0.5; single-label: [label]; regression: []."""
    truncated: bool
    """True when the input was cut at its task's max length (see `TaskInfo.max_length`)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def make_prediction(info: TaskInfo, logits: np.ndarray, truncated: bool) -> Prediction:
    """Turn one row's logits (exactly `info.num_labels` of them) into a Prediction."""
    logits = np.asarray(logits, dtype=np.float64)
    if info.problem_type == "regression":
        value = float(logits[0])
        return Prediction(info.name, None, value, {}, value, [], truncated)
    if info.problem_type == "multi_label":
        probs = 1.0 / (1.0 + np.exp(-logits))
        chosen: list[str] | None = [
            lab for lab, p in zip(info.labels, probs, strict=True) if p >= 0.5
        ]
    else:
        shifted = np.exp(logits - logits.max())
        probs = shifted / shifted.sum()
        chosen = None
    top = int(np.argmax(probs))
    label = info.labels[top]
    scores = {name: float(p) for name, p in zip(info.labels, probs, strict=True)}
    predicted = [label] if chosen is None else chosen
    return Prediction(info.name, label, float(probs[top]), scores, None, predicted, truncated)
