"""Training data: read a table (TSV/CSV/JSON/JSONL/Parquet/`datasets` folder) and turn it into a task.

TSV and CSV are read with quoting off (many corpora hold bare `"` characters) and a UTF-8
byte-order mark is ignored. A file without a header is read when its columns are given by
0-based index (`--text-column 3 --label-column 1`). Labels become ids in a fixed order that is
stored with the task, so that predictions map back to names.
"""

from __future__ import annotations

import contextlib
import csv
import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitfit_deploy.contract import PROBLEM_TYPES
from bitfit_deploy.errors import DataError

TEXT_CANDIDATES = ("text", "sentence", "sentence1", "question", "#1 String", "premise")
PAIR_CANDIDATES = {
    "sentence1": "sentence2",
    "question": "sentence",
    "#1 String": "#2 String",
    "premise": "hypothesis",
}
LABEL_CANDIDATES = ("label", "labels", "score", "Quality", "target")
EVAL_SPLITS = ("validation", "dev", "test")

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
        as_int = [_as_index(c) is not None for c in given]
        if any(as_int) and not all(as_int):
            raise DataError(
                "give all columns by name or all by 0-based index (for a file without a header), "
                f"not a mix: text={self.text!r}, pair={self.pair!r}, label={self.label!r}."
            )
        return bool(given) and all(as_int)


@dataclass
class Split:
    """One split as model inputs: texts, optional second texts, and encoded labels."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[Any]
    """int ids (single_label), multi-hot float lists (multi_label) or floats (regression)."""

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
    path: str | Path, header: bool = True, split: str = "train"
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read a table into rows (dicts) and its column names; header-less columns are named "0", "1", ..."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist; check the path.")
    with _quiet_datasets(), tempfile.TemporaryDirectory(prefix="bitfit-data-") as cache:
        dataset = _load(path, header, split, cache)
        columns = list(dataset.column_names)
        rows = dataset.to_list()
    if not header:
        columns = [str(c) for c in columns]
    return rows, columns


def _load(path: Path, header: bool, split: str, cache: str) -> Any:
    import datasets

    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise DataError(
                f"{str(path)!r} is a folder but not one written by datasets' save_to_disk ({exc}); "
                "pass a TSV, CSV, JSON, JSONL or Parquet file instead."
            ) from exc
        if isinstance(loaded, datasets.DatasetDict):
            names = [split] if split == "train" else [s for s in EVAL_SPLITS if s in loaded]
            chosen = next((s for s in names if s in loaded), None)
            if chosen is None:
                raise DataError(
                    f"{str(path)!r} holds the splits {sorted(loaded)}; no {split!r} split among them. "
                    "Pass the split's own folder instead."
                )
            return loaded[chosen]
        return loaded
    suffixes = [s.lower() for s in path.suffixes]
    ext = next((s for s in reversed(suffixes) if s not in (".gz", ".bz2", ".xz", ".zst")), "")
    kwargs: dict[str, Any] = {"data_files": str(path), "split": "train", "cache_dir": cache}
    try:
        if ext in (".tsv", ".csv", ".txt"):
            delimiter = "," if ext == ".csv" else "\t"
            names = _csv_columns(path, delimiter, header)
            features = datasets.Features({n: datasets.Value("string") for n in names})
            return datasets.load_dataset(
                "csv",
                delimiter=delimiter,
                quoting=csv.QUOTE_NONE if ext != ".csv" else csv.QUOTE_MINIMAL,
                encoding="utf-8-sig",
                header=0 if header else None,
                column_names=names,
                features=features,
                na_filter=False,
                **kwargs,
            )
        if ext in (".json", ".jsonl"):
            return datasets.load_dataset("json", **kwargs)
        if ext == ".parquet":
            return datasets.load_dataset("parquet", **kwargs)
    except DataError:
        raise
    except Exception as exc:  # the parsers raise many types; name the file and the cause
        raise DataError(f"cannot read {str(path)!r} as {ext or 'a table'}: {exc}") from exc
    raise DataError(
        f"{str(path)!r}: unknown data format {ext or '(no extension)'!r}; use .tsv, .csv, .json, "
        ".jsonl, .parquet or a folder written by datasets' save_to_disk."
    )


def _csv_columns(path: Path, delimiter: str, header: bool) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        first = f.readline().rstrip("\r\n")
    if not first:
        raise DataError(f"{str(path)!r} is empty; it needs at least one row of data.")
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    cells = next(csv.reader([first], delimiter=delimiter, quoting=quoting))
    if header:
        return cells
    return [str(i) for i in range(len(cells))]


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    import datasets
    from datasets.utils import logging as ds_logging

    was_disabled = datasets.are_progress_bars_disabled()
    level = ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity_error()
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if not was_disabled:
            datasets.enable_progress_bars()


def load_task_data(
    train: str | Path,
    eval: str | Path | None = None,
    columns: Columns | None = None,
    problem_type: str = "single_label",
    label_names: Sequence[str] | None = None,
    label_map: dict[str, str] | None = None,
) -> TaskData:
    """Read train (and eval) data and encode it for `problem_type`.

    Args:
        columns: text / pair / label columns; unset ones are guessed from common names.
        label_names: the label order to use (else sorted, numerically where labels are numbers).
        label_map: raw label value -> label name (e.g. {"0": "negative"}) applied before encoding.
    """
    if problem_type not in PROBLEM_TYPES:
        raise DataError(
            f"unknown problem type {problem_type!r}; choose one of {', '.join(PROBLEM_TYPES)}."
        )
    columns = columns or Columns()
    header = not columns.by_index()
    rows, found = read_table(train, header=header, split="train")
    resolved = _resolve_columns(columns, found, str(train))
    raw_train = _extract(rows, resolved, str(train))
    raw_eval = None
    if eval is not None:
        eval_rows, eval_found = read_table(eval, header=header, split="eval")
        _resolve_columns(Columns(*resolved.values()), eval_found, str(eval))
        raw_eval = _extract(eval_rows, resolved, str(eval))
    labels, encode = _label_encoder(raw_train[2], problem_type, label_names, label_map, str(train))
    train_split = Split(
        raw_train[0], raw_train[1], [encode(v, str(train), i) for i, v in enumerate(raw_train[2])]
    )
    eval_split = None
    if raw_eval is not None:
        _check_seen(raw_eval[2], labels, problem_type, label_map, str(eval), str(train))
        eval_split = Split(
            raw_eval[0], raw_eval[1], [encode(v, str(eval), i) for i, v in enumerate(raw_eval[2])]
        )
    return TaskData(
        train_split,
        eval_split,
        labels,
        problem_type,
        {"text": resolved["text"], "pair": resolved["pair"], "label": resolved["label"]},
    )


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
    return {"text": text, "pair": pair, "label": label}


def _extract(
    rows: list[dict[str, Any]], cols: dict[str, str | None], source: str
) -> tuple[list[str], list[str] | None, list[Any]]:
    if not rows:
        raise DataError(f"{source} has no rows of data; it needs at least one labelled example.")
    texts, pairs, labels = [], [] if cols["pair"] else None, []
    for i, row in enumerate(rows):
        label = row[cols["label"]]
        if _missing(label):
            raise DataError(
                f"{source}: row {i + 1} has no label in column {cols['label']!r}; fix or drop it."
            )
        texts.append(_text(row[cols["text"]]))
        if pairs is not None:
            pairs.append(_text(row[cols["pair"]]))
        labels.append(label)
    return texts, pairs, labels


def _missing(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, float) and math.isnan(value))
    )


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _label_key(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _multi_keys(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [_label_key(v) for v in value]
    return [p.strip() for p in str(value).split(",") if p.strip()]


def _sorted_names(keys: set[str]) -> list[str]:
    try:
        return sorted(keys, key=float)
    except ValueError:
        return sorted(keys)


def _label_encoder(
    raw: list[Any],
    problem_type: str,
    names: Sequence[str] | None,
    label_map: dict[str, str] | None,
    source: str,
):
    if problem_type == "regression":

        def encode_float(value: Any, src: str, i: int) -> float:
            try:
                return float(value)
            except (TypeError, ValueError):
                raise DataError(
                    f"{src}: row {i + 1} label {value!r} is not a number; regression needs numbers."
                ) from None

        return ["score"], encode_float
    mapping = label_map or {}
    if problem_type == "single_label":
        seen = {mapping.get(_label_key(v), _label_key(v)) for v in raw}
    else:
        seen = {mapping.get(k, k) for v in raw for k in _multi_keys(v)}
    labels = list(names) if names else _sorted_names(seen)
    unknown = sorted(seen - set(labels))
    if unknown:
        raise DataError(f"{source}: labels {unknown} are not among the expected {labels}.")
    index = {name: i for i, name in enumerate(labels)}
    if problem_type == "single_label" and len(labels) < 2:
        raise DataError(
            f"{source}: every row has the label {labels}; a classifier needs two labels or more."
        )

    def encode(value: Any, src: str, i: int) -> Any:
        if problem_type == "single_label":
            key = mapping.get(_label_key(value), _label_key(value))
            if key not in index:
                raise DataError(f"{src}: row {i + 1} label {key!r} is not among {labels}.")
            return index[key]
        hot = [0.0] * len(labels)
        for k in _multi_keys(value):
            key = mapping.get(k, k)
            if key not in index:
                raise DataError(f"{src}: row {i + 1} label {key!r} is not among {labels}.")
            hot[index[key]] = 1.0
        return hot

    return labels, encode


def _check_seen(
    raw: list[Any],
    labels: list[str],
    problem_type: str,
    label_map: dict[str, str] | None,
    source: str,
    train_source: str,
) -> None:
    if problem_type == "regression":
        return
    mapping = label_map or {}
    keys = (
        {_label_key(v) for v in raw}
        if problem_type == "single_label"
        else {k for v in raw for k in _multi_keys(v)}
    )
    unseen = sorted({mapping.get(k, k) for k in keys} - set(labels))
    if unseen:
        raise DataError(
            f"{source} has labels {unseen} that never occur in the training data {train_source} "
            f"(training labels: {labels}); fix the labels or add training rows for them."
        )
