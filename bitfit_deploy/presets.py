"""GLUE task presets: columns, header, label names and metric of each task's original files."""

from __future__ import annotations

from dataclasses import dataclass, field

from bitfit_deploy.data import Columns
from bitfit_deploy.errors import DataError


@dataclass(frozen=True)
class Preset:
    """How to read one GLUE task's TSV files and score it."""

    name: str
    text: str | int
    label: str | int
    pair: str | int | None = None
    problem_type: str = "single_label"
    labels: tuple[str, ...] = ()
    """Label names in id order (empty for regression)."""
    label_map: dict[str, str] = field(default_factory=dict)
    """Raw value in the file -> label name, where the file stores numbers."""
    metric: str = "accuracy"
    """The metric that picks the best epoch."""

    def columns(self) -> Columns:
        """The data columns (indexes for a file without a header)."""
        return Columns(text=self.text, pair=self.pair, label=self.label)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "sst2",
            "sentence",
            "label",
            labels=("negative", "positive"),
            label_map={"0": "negative", "1": "positive"},
        ),
        # CoLA has no header: source, label, original mark, sentence.
        Preset(
            "cola",
            3,
            1,
            labels=("unacceptable", "acceptable"),
            label_map={"0": "unacceptable", "1": "acceptable"},
            metric="matthews",
        ),
        Preset(
            "mrpc",
            "#1 String",
            "Quality",
            pair="#2 String",
            labels=("not_equivalent", "equivalent"),
            label_map={"0": "not_equivalent", "1": "equivalent"},
            metric="f1",
        ),
        Preset(
            "rte", "sentence1", "label", pair="sentence2", labels=("entailment", "not_entailment")
        ),
        Preset(
            "stsb",
            "sentence1",
            "score",
            pair="sentence2",
            problem_type="regression",
            metric="pearson",
        ),
        Preset(
            "qnli", "question", "label", pair="sentence", labels=("entailment", "not_entailment")
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called `name` (case-insensitive, `sst-2` == `sst2`)."""
    key = name.lower().replace("-", "")
    if key not in PRESETS:
        raise DataError(f"unknown preset {name!r}; known GLUE presets: {', '.join(PRESETS)}.")
    return PRESETS[key]
