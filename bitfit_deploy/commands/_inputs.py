"""Reading `predict` inputs so that output line N answers input N, whatever the line holds.

Lines are split at "\\n" only (a "\\r" before it is dropped), so a form feed or U+2028 inside a
text never adds a line. A text line is one input; for a task trained on pairs it is
`text<TAB>text_pair` with exactly one tab, and for any other task a tab is just text. A JSONL
line is `{"text": ..., "text_pair": ...}` (`text_pair` optional) or a JSON string. A line that
cannot be an input (not UTF-8, not JSON, not one tab for a pair task, or a text of it empty or
blank, in any form) becomes a `Row` with an error instead, and keeps its place.
"""

from __future__ import annotations

import codecs
import json
import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

from bitfit_deploy.runtime.tokenize import TextInput

FORMATS = ("auto", "text", "jsonl")


@dataclass(frozen=True)
class Row:
    """One input: where it came from ("line" or "argument", 1-based), and the input or an error."""

    source: str
    number: int
    item: TextInput | None
    error: str | None = None

    def error_dict(self) -> dict[str, object]:
        """The JSON line printed in this input's place when it cannot be predicted."""
        return {self.source: self.number, "error": "invalid_input", "detail": self.error}


MAX_INPUT_BYTES = 1 << 30
"""`predict --input` reads the whole input first; past this, split it (or serve it)."""


def read_input(stream: BinaryIO, limit: int = MAX_INPUT_BYTES) -> bytes:
    """The whole of `--input`: a file, a pipe or stdin (`-`), never a device such as /dev/zero,
    which would be read until memory ran out, and at most `limit` bytes."""
    from bitfit_deploy.errors import InvalidInputError

    try:
        fd = stream.fileno()
        mode, terminal = os.fstat(fd).st_mode, os.isatty(fd)
    except (OSError, ValueError, AttributeError):  # no descriptor: an in-memory stream
        mode, terminal = stat.S_IFREG, False
    device = stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode)
    if device and not terminal:  # typing the inputs at a terminal is fine
        name = getattr(stream, "name", "--input")
        raise InvalidInputError(
            f"--input {name!r} is a device or socket, not a file or pipe of inputs."
        )
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise InvalidInputError(
            f"--input holds more than {limit:,} bytes; split it into smaller files, or send "
            "the inputs to `serve`."
        )
    return data


def split_lines(data: bytes) -> list[bytes]:
    """The lines of a file as `wc -l` counts them (plus an unterminated last one)."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line.removesuffix(b"\r") for line in lines]


JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")


def is_json_lines_name(name: object) -> bool:
    """True for a file name ending .jsonl, .ndjson or .json, in any case."""
    return isinstance(name, str) and name.lower().endswith(JSON_LINES_SUFFIXES)


def guess_format(name: object, lines: list[bytes]) -> str:
    """ "jsonl" for a JSON-lines file name, or when every non-blank line is a JSON object with a
    "text"; else "text". A plain text file of sentences never reads that way."""
    if is_json_lines_name(name):
        return "jsonl"
    lines = [lines[0].removeprefix(codecs.BOM_UTF8), *lines[1:]] if lines else lines
    filled = [line for line in lines if line.strip()]
    if not filled:
        return "text"
    for line in filled:
        if not line.lstrip().startswith(b"{"):
            return "text"
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            return "text"
        if not isinstance(value, dict) or "text" not in value:
            return "text"
    return "jsonl"


def read_rows(lines: list[bytes], fmt: str, inputs: str) -> list[Row]:
    """One Row per line, read as `fmt` ("text" or "jsonl") for a task whose inputs are `inputs`."""
    rows = []
    for number, raw in enumerate(lines, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            rows.append(
                _bad("line", number, f"is not UTF-8 (byte {exc.start}); save the file as UTF-8")
            )
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        if fmt == "jsonl":
            rows.append(_jsonl_row(text, number))
        else:
            rows.append(text_row("line", number, text, inputs))
    return rows


def text_row(source: str, number: int, text: str, inputs: str) -> Row:
    """A text input: `text<TAB>text_pair` for a pair task, else the whole text."""
    if inputs != "pair":
        return _row(source, number, text)
    tabs = text.count("\t")
    if tabs != 1 and text.strip():
        return _bad(
            source,
            number,
            f"has {tabs or 'no'} tab{'s' * (tabs != 1)}, but the task takes (text, text_pair) "
            "pairs: write text<TAB>text_pair with one tab, or use JSONL with 'text' and "
            "'text_pair' fields (a text may hold tabs there)",
        )
    return _row(source, number, tuple(text.split("\t")) if tabs == 1 else text)


def _jsonl_row(text: str, number: int) -> Row:
    if not text.strip():
        return _row("line", number, text)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return _bad("line", number, f"is not JSON ({exc})")
    if isinstance(value, str):
        return _row("line", number, value)
    shape = 'a JSON object {"text": ..., "text_pair": ...} (text_pair optional) or a JSON string'
    if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        return _bad("line", number, f"must be {shape}")
    pair = value.get("text_pair")
    if pair is None:
        return _row("line", number, value["text"])
    if not isinstance(pair, str):
        return _bad("line", number, f"has a 'text_pair' that is not a string; it must be {shape}")
    return _row("line", number, (value["text"], pair))


def _row(source: str, number: int, item: TextInput) -> Row:
    """The input, unless a text of it is empty or blank: every input form refuses those alike."""
    if isinstance(item, str):
        if not item.strip():
            return _bad(source, number, "is empty; there is no text to predict")
        return Row(source, number, item)
    for part, text in zip(("text", "text_pair"), item, strict=True):
        if not text.strip():
            return _bad(source, number, f"has an empty {part}; there is no text to predict")
    return Row(source, number, item)


def _bad(source: str, number: int, why: str) -> Row:
    return Row(source, number, None, f"{source} {number} {why}.")
