"""What the runtime returns: per-input predictions and per-task descriptions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


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
    """Top-scoring label; None for regression. Multi-label: the top one even when no label
    reaches 0.5; `predicted_labels` holds the predicted ones."""
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


def make_prediction(info: TaskInfo, logits: Sequence[float], truncated: bool) -> Prediction:
    """Turn one row's logits (exactly `info.num_labels` of them) into a Prediction.

    Plain float math: for a handful of labels it is several times faster than numpy's per-call
    overhead, and the runtime makes one Prediction per input.
    """
    values = [float(x) for x in logits]
    if info.problem_type == "regression":
        return Prediction(info.name, None, values[0], {}, values[0], [], truncated)
    if info.problem_type == "multi_label":
        probs = [_sigmoid(x) for x in values]
        chosen: list[str] | None = [
            lab for lab, p in zip(info.labels, probs, strict=True) if p >= 0.5
        ]
    else:
        top_logit = max(values)
        shifted = [math.exp(x - top_logit) for x in values]
        total = sum(shifted)
        probs = [e / total for e in shifted]
        chosen = None
    top = max(range(len(probs)), key=probs.__getitem__)
    label = info.labels[top]
    scores = dict(zip(info.labels, probs, strict=True))
    predicted = [label] if chosen is None else chosen
    return Prediction(info.name, label, probs[top], scores, None, predicted, truncated)


def _sigmoid(x: float) -> float:
    """1 / (1 + e^-x) without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
