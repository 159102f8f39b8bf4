"""Parse the text of a TSV/CSV/JSON/JSONL file into a `Table` of rows that remembers their lines.

The `csv` and `json` modules parse; this module checks what they return. A record whose field
count differs from the header's, a quoted CSV field that runs over lines (unless quoting is
multiline), text after a closing quote, a duplicate column or JSON key, or a JSON line that is not
an object stops the read with the line and what to do. Blank lines are skipped and counted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bitfit_deploy.errors import DataError, listing

QUOTING = ("none", "csv", "multiline")
"""How `"` is read in TSV/CSV: none (a plain character), csv (a field may be quoted, on one line)
and multiline (a quoted field may also hold line breaks)."""
_CSV_QUOTED = re.compile(r'"(?:[^"]|"")*"', re.DOTALL)


@dataclass
class Table:
    """Rows of one file as read, with the line each row starts on (text formats) and what was skipped."""

    source: str
    columns: list[str]
    rows: list[dict[str, Any]]
    lines: list[int] | None = None
    """The 1-based line each row starts on; None for formats without lines (Parquet, JSON arrays)."""
    line_count: int | None = None
    header_lines: int = 0
    blank_lines: int = 0
    multiline_rows: int = 0
    """Rows whose quoted fields run over several lines (read with quoting multiline)."""
    notes: list[str] = field(default_factory=list)
    """What was read as written but may not be what was meant (fields that look CSV-quoted)."""

    def where(self, i: int) -> str:
        """Where row `i` (0-based) is in the file: "line 7" or, without lines, "row 6"."""
        return f"line {self.lines[i]}" if self.lines is not None else f"row {i + 1}"


def read_delimited(text: str, source: str, delimiter: str, quoting: str, header: bool) -> Table:
    """Rows of a TSV/CSV text; `quoting` is one of QUOTING, `header` names the columns."""
    quoted = quoting != "none"
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=delimiter,
        quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
        strict=quoted,
    )
    records: list[tuple[int, int, list[str]]] = []  # first line, last line, fields
    blank = 0
    start = 1
    try:
        with _no_field_limit():
            for fields in reader:
                if fields:
                    records.append((start, reader.line_num, fields))
                else:
                    blank += 1
                start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(
            _csv_error(text, source, delimiter, quoting, header, start, reader.line_num, exc)
        ) from None
    if not records:
        raise DataError(f"{source!r} is empty; it needs at least one row of data.")
    spans = [(a, b) for a, b, _ in records if b > a]
    if spans and quoting == "csv":
        a, b = spans[0]
        more = f" ({len(spans):,} fields do)" if len(spans) > 1 else ""
        raise DataError(
            f"{source}: a quoted field opens on line {a} and runs over lines {a}-{b}{more}, so "
            f"the file's {reader.line_num:,} lines give {len(records) - header:,} rows. If the "
            '" characters are part of the text, pass --quoting none; if quoted fields really hold '
            "line breaks, pass --quoting multiline."
        )
    if header:
        names = records[0][2]
        _check_header(names, source, records[0][0], delimiter)
        body = records[1:]
        repeats = [f"line {a}" for a, _, fields in body if fields == names]
        if repeats:
            raise DataError(
                f"{source}: {listing(repeats)} repeat{'s' * (len(repeats) == 1)} the header (were "
                "files joined together?); remove the repeated header lines."
            )
    else:
        names = [str(i) for i in range(len(records[0][2]))]
        body = records
    _check_widths(body, len(names), source, delimiter, header, records[0][0])
    return Table(
        source,
        names,
        [dict(zip(names, fields, strict=True)) for _, _, fields in body],
        [a for a, _, _ in body],
        reader.line_num,
        header_lines=records[0][1] if header else 0,
        blank_lines=blank,
        multiline_rows=len(spans),
        notes=_quoted_note(body) if quoting == "none" else [],
    )


def _quoted_note(body: list[tuple[int, int, list[str]]]) -> list[str]:
    """A note when fields read with quoting off look like CSV-quoted ones ("a ""b"" c")."""
    lines = [a for a, _, fields in body for f in fields if _looks_quoted(f)]
    if not lines:
        return []
    return [
        f"{len(lines):,} field{'s look' if len(lines) > 1 else ' looks'} quoted as in CSV "
        f'("..."" ...", first on line {lines[0]}) and {"are" if len(lines) > 1 else "is"} read '
        "as written, quotes included; if the file was saved with quotes, pass --quoting csv "
        "(or multiline)"
    ]


def _looks_quoted(field: str) -> bool:
    return len(field) > 3 and bool(_CSV_QUOTED.fullmatch(field)) and '""' in field[1:-1]


def _csv_error(
    text: str,
    source: str,
    delimiter: str,
    quoting: str,
    header: bool,
    start: int,
    line: int,
    exc: csv.Error,
) -> str:
    """Explain a csv.Error: where the record and its quoted field began, and the way out."""
    message = str(exc)
    if quoting == "none":
        return f"{source}: line {line}: {message}; fix the line (or the file's export settings)."
    lenient = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        with _no_field_limit():
            rows = sum(1 for fields in lenient if fields) - header
        count = f" Read with quotes, the file's {lenient.line_num:,} lines give {rows:,} rows."
    except csv.Error:
        count = ""
    if "expected after" in message and line > start:
        what = (
            f"the quoted field that opens on line {start} runs to line {line}, where text follows "
            f"its closing quote ({message})"
        )
    elif "expected after" in message:
        what = f"line {line}: text follows the closing quote of a quoted field ({message})"
    elif "end of data" in message:
        what = f"the quoted field that opens on line {start} never closes (the file ends inside it)"
    else:
        what = f"line {line}: {message}"
    way_out = (
        'If the " characters are part of the text, pass --quoting none; otherwise quote whole '
        'fields and double each " inside them ("he said ""hi"""'
    )
    if line > start and quoting != "multiline":
        way_out += "); a quoted field that holds line breaks needs --quoting multiline."
    else:
        way_out += ")."
    return f"{source}: {what}.{count} {way_out}"


@contextlib.contextmanager
def _no_field_limit() -> Iterator[None]:
    """Lift the csv module's 128 KiB field limit (long documents are real texts) while reading."""
    limit = csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(limit)


def _check_header(names: list[str], source: str, line: int, delimiter: str) -> None:
    others = [d for d in ",;\t|" if d != delimiter and d in names[0]]
    if len(names) == 1 and others:
        raise DataError(
            f"{source}: the header (line {line}) is one field, {names[0]!r}: the file seems "
            f"delimited by {others[0]!r}, not {delimiter!r}. Save it as CSV (commas, .csv) or TSV "
            "(tabs, .tsv), or give it the extension of its delimiter."
        )
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen and name:
            raise DataError(
                f"{source}: the header (line {line}) names the column {name!r} twice (fields "
                f"{seen[name] + 1} and {i + 1}); rename one of them."
            )
        seen[name] = i


def _check_widths(
    body: list[tuple[int, int, list[str]]],
    width: int,
    source: str,
    delimiter: str,
    header: bool,
    first_line: int,
) -> None:
    """Every record has the header's field count, else an error with the lines and the likely cause."""
    bad = [(a, fields) for a, _, fields in body if len(fields) != width]
    if not bad:
        return
    line, fields = bad[0]
    sep = "a tab" if delimiter == "\t" else "a comma"
    reference = f"the header has {width}" if header else f"line {first_line} has {width}"
    others = ""
    if len(bad) > 1:
        share = f"all {len(body):,}" if len(bad) == len(body) else f"{len(bad):,} of {len(body):,}"
        others = f"; {share} data lines differ: " + listing([f"line {a}" for a, _ in bad])
    if len(fields) > width and not any(f.strip() for f in fields[width:]):
        cause = (
            f"the extra field is empty: the line ends with {sep} (a trailing delimiter). Remove "
            f"the trailing {sep[2:]}s, or name the extra column in the header."
        )
    elif len(fields) > width and delimiter == "\t":
        cause = (
            "a text holds a tab, or the header lacks a column name. Replace tabs inside texts "
            "with spaces, or complete the header."
        )
    elif len(fields) > width:
        cause = (
            "a text holds a comma outside quotes, or the header lacks a column name. Quote "
            'such fields ("a, b"), or save the file as TSV.'
        )
    else:
        cause = (
            "a field is missing, or a line break inside a text split the row. Fill the missing "
            "fields, or join the split lines (if texts with line breaks are quoted, pass "
            "--quoting multiline)."
        )
    raise DataError(
        f"{source}: line {line} has {len(fields)} field{'s' * (len(fields) != 1)}, {reference}"
        f"{others}. Likely cause: {cause}"
    )


def read_json(text: str, source: str, ext: str) -> Table:
    """Rows of a JSON Lines text, or of a JSON document (`ext` ".json") of one of the known forms."""
    if ext == ".json":
        try:
            value = json.loads(text, object_pairs_hook=_unique_keys)
        except _DuplicateKey as exc:
            raise DataError(
                f"{source}: an object has the key {exc.args[0]!r} twice; keep one of them."
            ) from None
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":
                raise DataError(
                    f"{source}: line {exc.lineno} is not valid JSON ({exc.msg} at column "
                    f"{exc.colno}); fix the line."
                ) from None
        else:
            return _json_value(value, source)
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    physical = text.split("\n")
    if text.endswith("\n"):
        physical.pop()  # the last line's end, not an empty line after it
    blank = 0
    for number, line in enumerate(physical, 1):
        if not line.strip():
            blank += 1
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys)
        except _DuplicateKey as exc:
            raise DataError(
                f"{source}: line {number} has the key {exc.args[0]!r} twice; keep one of them."
            ) from None
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{source}: line {number} is not valid JSON ({exc.msg} at column {exc.colno}); "
                "each line of a JSON Lines file must be one JSON object."
            ) from None
        if not isinstance(row, dict):
            raise DataError(
                f"{source}: line {number} holds a JSON {type(row).__name__}, not an object; each "
                'line of a JSON Lines file must be one object, e.g. {"text": "...", "label": 1}.'
            )
        rows.append(row)
        lines.append(number)
    if not rows:
        raise DataError(f"{source!r} is empty; it needs at least one row of data.")
    return Table(source, _union_keys(rows), rows, lines, len(physical), blank_lines=blank)


def _json_value(value: Any, source: str) -> Table:
    """A JSON document: a list of objects, an object of equal-length column lists, or one row."""
    if isinstance(value, list) and all(isinstance(r, dict) for r in value):
        if not value:
            raise DataError(f"{source!r} is empty; it needs at least one row of data.")
        return Table(source, _union_keys(value), value)
    if isinstance(value, dict) and value:
        columns = list(value.values())
        if all(isinstance(c, list) for c in columns) and len({len(c) for c in columns}) == 1:
            names = list(value)
            rows = [dict(zip(names, r, strict=True)) for r in zip(*columns, strict=True)]
            return Table(source, names, rows)
        return Table(source, list(value), [value], [1], 1)  # one JSON Lines row
    raise DataError(
        f'{source}: expected a JSON list of objects ([{{"text": ..., "label": ...}}, ...]), an '
        "object of equal-length column lists, or JSON Lines (one object per line); found a "
        f"{type(value).__name__} that is none of these. Convert the file to JSON Lines."
    )


class _DuplicateKey(ValueError):
    """A JSON object names one key twice; json would keep the last value in silence."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _union_keys(rows: list[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)
