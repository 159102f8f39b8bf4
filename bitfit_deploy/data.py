"""Training data: read a table (TSV/CSV/JSON/JSONL/Parquet/`datasets` folder) and turn it into a task.

Every row taken is what the file says; anything else is an error naming the file, the line and
what to do, or (with `drop_empty`) a counted drop that the split's `ReadReport` records. Files
are read and checked in `data_tables` and `data_text` (TSV with quoting off, CSV with quotes that
may not run over lines unless `quoting="multiline"`), labels in `data_labels` (numeric spellings
of one number are one label; regression targets must be finite). A file without a header is read
when its columns are given by 0-based index (`--text-column 3 --label-column 1`). Labels become
ids in a fixed order that is stored with the task, so that predictions map back to names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitfit_deploy.contract import PROBLEM_TYPES
from bitfit_deploy.data_labels import LabelReader, case_hint, order_labels, targets
from bitfit_deploy.data_tables import EVAL_SPLITS, QUOTING, Table, listing, read_file
from bitfit_deploy.errors import DataError

__all__ = [
    "EVAL_SPLITS",
    "QUOTING",
    "Columns",
    "ReadReport",
    "Split",
    "TaskData",
    "load_task_data",
    "read_table",
]

TEXT_CANDIDATES = ("text", "sentence", "sentence1", "question", "#1 String", "premise")
PAIR_CANDIDATES = {
    "sentence1": "sentence2",
    "question": "sentence",
    "#1 String": "#2 String",
    "premise": "hypothesis",
}
LABEL_CANDIDATES = ("label", "labels", "score", "Quality", "target")

Column = str | int | None


@dataclass
class Columns:
    """Which columns hold the text, the optional second text, and the label (name or 0-based index)."""

    text: Column = None
    pair: Column = None
    label: Column = None

    def by_index(self) -> bool:
        """True when the columns are given by index: the file is read without a header."""
        given = [c for c in (self.text, self.pair, self.label) if c is not None]
        for column in given:
            if (isinstance(column, int) and not isinstance(column, bool) and column < 0) or (
                isinstance(column, str) and column.startswith("-") and column[1:].isdigit()
            ):
                raise DataError(
                    f"column index {column} is negative; indexes count from 0 at the left "
                    "(for a file without a header), or give the column's name."
                )
        as_int = [_as_index(c) is not None for c in given]
        if any(as_int) and not all(as_int):
            raise DataError(
                "give all columns by name or all by 0-based index (for a file without a header), "
                f"not a mix: text={self.text!r}, pair={self.pair!r}, label={self.label!r}."
            )
        return bool(given) and all(as_int)


@dataclass
class ReadReport:
    """What reading one file found: rows, lines, and what was skipped, dropped or merged."""

    source: str
    rows_read: int
    line_count: int | None = None
    """Lines in the file (text formats only)."""
    header_lines: int = 0
    blank_lines: int = 0
    multiline_rows: int = 0
    dropped: dict[str, list[str]] = field(default_factory=dict)
    """Why -> where (e.g. "an empty text in column 'text'" -> ["line 4", ...])."""
    notes: list[str] = field(default_factory=list)
    """Things read in a way the user may not expect (labels written in several spellings)."""

    @property
    def rows_used(self) -> int:
        """Rows kept for training or evaluation."""
        return self.rows_read - sum(len(w) for w in self.dropped.values())


@dataclass
class Split:
    """One split as model inputs: texts, optional second texts, and encoded labels."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[Any]
    """int ids (single_label), multi-hot float lists (multi_label) or floats (regression)."""
    report: ReadReport | None = None
    """What was read from the file (None for a split built in code)."""

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class TaskData:
    """Train (and eval) splits of one task with its label names and the columns used."""

    train: Split
    eval: Split | None
    labels: list[str]
    problem_type: str
    columns: dict[str, str | None] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return 1 if self.problem_type == "regression" else len(self.labels)


def read_table(
    path: str | Path, header: bool = True, split: str = "train", quoting: str | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read a table into rows (dicts) and its column names; header-less columns are named "0", "1", ..."""
    table = read_file(path, header=header, split=split, quoting=quoting)
    return table.rows, table.columns


def load_task_data(
    train: str | Path,
    eval: str | Path | None = None,
    columns: Columns | None = None,
    problem_type: str = "single_label",
    label_names: Sequence[str] | None = None,
    label_map: dict[str, str] | None = None,
    *,
    quoting: str | None = None,
    drop_empty: bool = False,
) -> TaskData:
    """Read train (and eval) data and encode it for `problem_type`.

    Args:
        columns: text / pair / label columns; unset ones are guessed from common names.
        label_names: the label order to use (else sorted, numerically where labels are numbers).
        label_map: raw label value -> label name (e.g. {"0": "negative"}) applied before encoding.
        quoting: how TSV/CSV read `"`: none, csv or multiline [default: none for TSV, csv for CSV].
        drop_empty: skip rows whose text, second text or label is empty (counted in the report)
            instead of stopping with an error that lists them.
    """
    if problem_type not in PROBLEM_TYPES:
        raise DataError(
            f"unknown problem type {problem_type!r}; choose one of {', '.join(PROBLEM_TYPES)}."
        )
    columns = columns or Columns()
    header = not columns.by_index()
    table = read_file(train, header=header, split="train", quoting=quoting)
    resolved = _resolve_columns(columns, table.columns, table.source)
    if not header:
        _refuse_a_header_row(table, resolved)
    raw_train = _extract(table, resolved, drop_empty)
    raw_eval = None
    if eval is not None:
        eval_table = read_file(eval, header=header, split="eval", quoting=quoting)
        _resolve_columns(Columns(*resolved.values()), eval_table.columns, eval_table.source)
        if not header:
            _refuse_a_header_row(eval_table, resolved)
        raw_eval = _extract(eval_table, resolved, drop_empty)
    if problem_type == "regression":
        labels = ["score"]
        train_split = raw_train.split(targets(raw_train.labels, raw_train.where, raw_train.source))
        eval_split = None
        if raw_eval is not None:
            eval_split = raw_eval.split(targets(raw_eval.labels, raw_eval.where, raw_eval.source))
    else:
        keys = raw_train.label_keys(problem_type, label_map, label_names)
        labels = order_labels({k for row in keys for k in row}, label_names, raw_train.source)
        if problem_type == "single_label" and len(labels) < 2:
            raise DataError(
                f"{raw_train.source}: every row has the label {labels}; a classifier needs two "
                "labels or more."
            )
        train_split = raw_train.split(_encode(keys, labels, problem_type))
        eval_split = None
        if raw_eval is not None:
            eval_keys = raw_eval.label_keys(problem_type, label_map, label_names)
            unseen = sorted({k for row in eval_keys for k in row} - set(labels))
            if unseen:
                hint = case_hint(unseen, labels, "the training labels")
                raise DataError(
                    f"{raw_eval.source} has labels {unseen} that never occur in the training data "
                    f"{raw_train.source} (training labels: {labels}){hint}; fix the labels or add "
                    "training rows for them."
                )
            eval_split = raw_eval.split(_encode(eval_keys, labels, problem_type))
    return TaskData(train_split, eval_split, labels, problem_type, resolved)


def _as_index(column: Column) -> int | None:
    if isinstance(column, int):
        return column
    if isinstance(column, str) and column.isdigit():
        return int(column)
    return None


def _resolve_columns(columns: Columns, found: list[str], source: str) -> dict[str, str | None]:
    listing = ", ".join(repr(c) for c in found)

    def pick(role: str, given: Column, candidates: Sequence[str], option: str) -> str | None:
        if given is not None:
            name = (
                str(_as_index(given))
                if _as_index(given) is not None and columns.by_index()
                else str(given)
            )
            if name not in found:
                raise DataError(
                    f"{source}: no {role} column {given!r}; the columns found are {listing}. "
                    f"Pass {option} with one of them (or a 0-based index for a file without a header)."
                )
            return name
        name = next((c for c in candidates if c in found), None)
        if name is None and role != "pair":
            raise DataError(
                f"{source}: cannot tell which column holds the {role}; the columns found are "
                f"{listing}. Pass {option} (or --preset for a GLUE task)."
            )
        return name

    text = pick("text", columns.text, TEXT_CANDIDATES, "--text-column")
    pair_guess = [PAIR_CANDIDATES[text]] if columns.text is None and text in PAIR_CANDIDATES else []
    pair = pick("pair", columns.pair, pair_guess, "--text-pair-column")
    label = pick("label", columns.label, LABEL_CANDIDATES, "--label-column")
    roles = {"text": text, "pair": pair, "label": label}
    options = {"text": "--text-column", "pair": "--text-pair-column", "label": "--label-column"}
    for first, second in (("text", "pair"), ("text", "label"), ("pair", "label")):
        if roles[first] is not None and roles[first] == roles[second]:
            raise DataError(
                f"{source}: column {roles[first]!r} would be both the {first} and the {second}; "
                f"each needs its own column (the columns found are {listing}). Pass "
                f"{options[first]} and {options[second]} with two different columns."
            )
    return roles


@dataclass
class _Raw:
    """One file's rows after column extraction and before label encoding."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[Any]
    places: list[str]
    report: ReadReport

    @property
    def source(self) -> str:
        return self.report.source

    def where(self, i: int) -> str:
        return self.places[i]

    def label_keys(
        self, problem_type: str, label_map: dict[str, str] | None, names: Sequence[str] | None
    ) -> list[list[str]]:
        """Each row's label names; labels merged from several spellings become report notes."""
        reader = LabelReader(problem_type, label_map, names)
        keys = reader.keys(self.labels, self.where, self.source)
        self.report.notes.extend(reader.notes())
        return keys

    def split(self, encoded: list[Any]) -> Split:
        return Split(self.texts, self.pairs, encoded, self.report)


HEADER_WORDS = {"label", "labels", "class", "category", "target", "score", "sentiment", "quality"}
"""Words of a label column's name ("label_coarse", "Label", "class_id"): a first row whose label
cell holds one as a word, and occurs only there, is a header."""
TEXT_HEADER_NAMES = {
    c.casefold() for c in (*TEXT_CANDIDATES, *PAIR_CANDIDATES.values(), "review", "content")
}


def _refuse_a_header_row(table: Table, cols: dict[str, str | None]) -> None:
    """Columns by index read a file without a header: a first row whose label cell is a column
    name ("label", "score", ...) is a header, which would train as a row of its own class."""
    if not table.rows:
        return
    first = table.rows[0]
    label = first.get(cols["label"])
    text = first.get(cols["text"])
    words = set(re.split(r"[^a-z0-9]+", label.casefold())) if isinstance(label, str) else set()
    named = bool(words & HEADER_WORDS) or (
        isinstance(text, str) and text.strip().casefold() in TEXT_HEADER_NAMES
    )
    once = sum(1 for row in table.rows if row.get(cols["label"]) == label) == 1
    if named and once:
        cells = ", ".join(repr(first.get(c)) for c in cols.values() if c is not None)
        raise DataError(
            f"{table.source}: {table.where(0)} ({cells}) looks like a header, but columns given "
            "by index read a file without one; pass the columns by name (--text-column NAME "
            "--label-column NAME) or remove the header line."
        )


def _extract(table: Table, cols: dict[str, str | None], drop_empty: bool) -> _Raw:
    """Take the text, pair and label cells of every row; empty ones are an error or a counted drop."""
    source = table.source
    if not table.rows:
        raise DataError(f"{source} has no rows of data; it needs at least one labelled example.")
    roles = [("text", "an empty text", cols["text"]), ("label", "no label", cols["label"])]
    if cols["pair"] is not None:
        roles.insert(1, ("pair", "an empty second text", cols["pair"]))
    empty: dict[str, list[int]] = {}
    for i, row in enumerate(table.rows):
        for role, why, column in roles:
            value = row.get(column)
            if role != "label" and not _is_text(value):
                raise DataError(
                    f"{source}: {table.where(i)} holds {value!r} ({type(value).__name__}) in the "
                    f"{role} column {column!r}; texts must be strings. Fix the value or pick "
                    "another column."
                )
            if _missing(value) or (role != "label" and _is_nan(value)):
                empty.setdefault(f"{why} in column {column!r}", []).append(i)
    if empty and not drop_empty:
        found = "; ".join(
            f"{len(rows):,} row{'s have' if len(rows) > 1 else ' has'} {why}: "
            + listing([table.where(i) for i in rows])
            for why, rows in empty.items()
        )
        raise DataError(
            f'{source}: {found}. A cell is empty when it is missing, null, "" or only spaces. '
            "Fill in or remove these rows, or pass --drop-empty to skip them (the count is printed)."
        )
    skipped = {i for rows in empty.values() for i in rows}
    kept = [i for i in range(len(table.rows)) if i not in skipped]
    if not kept:
        raise DataError(
            f"{source}: every row has an empty text or label; no rows are left to use. Check the "
            "columns (--text-column, --label-column)."
        )
    rows = [table.rows[i] for i in kept]
    pair = cols["pair"]
    report = ReadReport(
        source,
        len(table.rows),
        table.line_count,
        table.header_lines,
        table.blank_lines,
        table.multiline_rows,
        {why: [table.where(i) for i in idx] for why, idx in empty.items()},
        list(table.notes),
    )
    return _Raw(
        [str(r[cols["text"]]) for r in rows],
        [str(r[pair]) for r in rows] if pair is not None else None,
        [r[cols["label"]] for r in rows],
        [table.where(i) for i in kept],
        report,
    )


def _is_text(value: Any) -> bool:
    """A text cell is a string, an integer (read as its digits), or missing."""
    return (
        value is None
        or isinstance(value, str)
        or (isinstance(value, int) and not isinstance(value, bool))
        or _is_nan(value)
    )


def _missing(value: Any) -> bool:
    """None or blank text; a NaN label is not missing but refused as not finite (data_labels)."""
    return value is None or (isinstance(value, str) and not value.strip())


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _encode(keys: list[list[str]], labels: list[str], problem_type: str) -> list[Any]:
    index = {name: i for i, name in enumerate(labels)}
    if problem_type == "single_label":
        return [index[row[0]] for row in keys]
    encoded = []
    for row in keys:
        hot = [0.0] * len(labels)
        for key in row:
            hot[index[key]] = 1.0
        encoded.append(hot)
    return encoded
