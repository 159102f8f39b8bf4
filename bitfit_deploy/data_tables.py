"""Read one data file into a `Table`: rows that remember the line they came from.

This module finds and opens the file: the format by extension (.tsv/.txt, .csv, .json, .jsonl,
.parquet, each text format optionally .gz/.bz2/.xz/.zst), a byte that is not UTF-8 (named by its
line; a UTF-8 byte-order mark is dropped), Parquet through pyarrow and folders written by
`datasets`' save_to_disk. The text formats are parsed and checked in `data_text`.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bitfit_deploy.data_text import QUOTING, Table, read_delimited, read_json
from bitfit_deploy.errors import DataError, listing
from bitfit_deploy.reading import open_regular, read_regular

__all__ = ["QUOTING", "Table", "listing", "read_file"]

DEFAULT_QUOTING = {".tsv": "none", ".txt": "none", ".csv": "csv"}
DELIMITERS = {".tsv": "\t", ".txt": "\t", ".csv": ","}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
EVAL_SPLITS = ("validation", "dev", "test")


def read_file(
    path: str | Path, header: bool = True, split: str = "train", quoting: str | None = None
) -> Table:
    """Read a TSV/CSV/JSON/JSONL/Parquet file or a `datasets` folder; see the module docstring.

    Args:
        header: the first line names the columns (TSV/CSV); else columns are named "0", "1", ...
        split: which split of a `datasets` folder ("train", or an eval split for anything else).
        quoting: one of QUOTING for TSV/CSV [default: none for TSV, csv for CSV].
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist; check the path.")
    if quoting is not None and quoting not in QUOTING:
        raise DataError(f"unknown quoting {quoting!r}; choose one of {', '.join(QUOTING)}.")
    if path.is_dir():
        return _read_folder(path, split)
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes[-1] if suffixes and suffixes[-1] in COMPRESSIONS else None
    ext = next((s for s in reversed(suffixes) if s not in COMPRESSIONS), "")
    source = str(path)
    if ext in DELIMITERS:
        text = _read_text(path, compression)
        return read_delimited(
            text, source, DELIMITERS[ext], quoting or DEFAULT_QUOTING[ext], header
        )
    if ext in (".json", ".jsonl"):
        return read_json(_read_text(path, compression), source, ext)
    if ext == ".parquet" and compression is None:
        import pyarrow.parquet as pq

        try:
            with open_regular(path, "data file", DataError) as fh:
                arrow = pq.read_table(fh)
        except DataError:
            raise
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise DataError(f"cannot read {source!r} as Parquet: {exc}") from exc
        return Table(source, list(arrow.column_names), arrow.to_pylist())
    raise DataError(
        f"{source!r}: unknown data format {ext or '(no extension)'!r}; use .tsv, .csv, .json, "
        ".jsonl, .parquet (TSV/CSV/JSON may end in .gz, .bz2, .xz or .zst) or a folder written by "
        "datasets' save_to_disk."
    )


def _read_text(path: Path, compression: str | None) -> str:
    """The file's text; a byte that is not UTF-8 stops the read with its line."""
    data = _read_bytes(path, compression)
    source = str(path)
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(
            f"{source}: the file is UTF-16 (it starts with a UTF-16 byte-order mark), not UTF-8; "
            "re-save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet, or iconv -f utf-16 -t utf-8)."
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        before = exc.object[exc.object.rfind(b"\n", 0, exc.start) + 1 : exc.start]
        before = before.decode("utf-8", errors="replace")[-30:]
        place = f"after {before!r}" if before else "at the start of the line"
        raise DataError(
            f"{source}: line {line} is not UTF-8 (byte 0x{exc.object[exc.start]:02x} {place}); "
            "re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 if it was written as "
            "Latin-1 (Windows-1252)."
        ) from None


def _read_bytes(path: Path, compression: str | None) -> bytes:
    raw = read_regular(path, "data file", DataError)  # a FIFO would block, /dev/zero never end
    if compression is None:
        return raw
    module = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma", ".zst": "zstandard"}[compression]
    try:
        decompress = importlib.import_module(module).decompress
    except ImportError:
        raise DataError(
            f"{path}: reading {compression} needs the {module} package; pip install {module}, or "
            "decompress the file first."
        ) from None
    try:
        return decompress(raw)
    except Exception as exc:  # gzip/bz2/lzma/zstandard each raise their own type
        raise DataError(
            f"{path}: cannot decompress it as {compression} ({exc}); check that the file is whole "
            "and that its extension names its compression."
        ) from exc


def _read_folder(path: Path, split: str) -> Table:
    import datasets

    with _quiet_datasets():
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
                    f"{str(path)!r} holds the splits {sorted(loaded)}; no {split!r} split among "
                    "them. Pass the split's own folder instead."
                )
            loaded = loaded[chosen]
        rows = loaded.to_list()
        for column, feature in loaded.features.items():  # labels by name, as the set names them
            classes = _class_label(feature, datasets)
            if classes is not None:
                for row in rows:
                    row[column] = _class_names(row.get(column), classes)
        return Table(str(path), list(loaded.column_names), rows)


def _class_label(feature: Any, datasets: Any) -> Any:
    """The ClassLabel of a label column, or of a multi-label list column (Sequence/List of
    ClassLabel); None for any other column."""
    if isinstance(feature, datasets.ClassLabel):
        return feature
    inner = getattr(feature, "feature", None)  # Sequence(ClassLabel) / List(ClassLabel)
    if isinstance(feature, list) and len(feature) == 1:
        inner = feature[0]
    return inner if isinstance(inner, datasets.ClassLabel) else None


def _class_names(value: Any, classes: Any) -> Any:
    """A ClassLabel value as its name; -1, the data set's "no label", as None (a missing label)."""
    if isinstance(value, list):
        return [_class_names(v, classes) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return classes.int2str(value) if 0 <= value < classes.num_classes else None
    return value


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
