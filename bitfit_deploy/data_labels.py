"""Labels as written in a file -> the label names and ids a task trains on.

Numeric spellings of one number are one label (`1`, `1.0`, ` 01 ` and `1e0` all read as `1`),
so a column exported as floats by one tool and as integers by another keeps two classes, not
four. A label that reads as a number that is not finite (`nan`, `inf`) is refused: it most often
marks a missing value. Regression targets must be finite numbers; a bad one is an error that
names its row and value before any model is loaded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from bitfit_deploy.errors import DataError, listing

_MAX_EXPONENT = 100
Where = Callable[[int], str]
"""Row index (0-based) -> its place in the file, e.g. "line 7"."""


MANY_NUMERIC_LABELS = 10
"""More distinct numeric labels than this, some fractional, look like scores for a regression."""


def number(text: str) -> Decimal | None:
    """`text` read as a decimal number (stripped), or None if it is not one."""
    text = text.strip()
    if not text or "_" in text:  # Decimal takes "1_000"; a label with "_" is a name
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def canonical(value: Decimal) -> str:
    """One spelling per finite number: "1" for 1, 1.0 and 1e0; "0.5" for .50 (exact, any length)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def label_key(value: Any) -> str:
    """The label name `value` stands for: stripped text, numbers in one spelling."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    text = repr(value) if isinstance(value, float) else str(value).strip()
    parsed = number(text)
    if parsed is None:
        return text
    if not parsed.is_finite():
        raise ValueError(text)
    if abs(parsed.adjusted()) > _MAX_EXPONENT:  # "1e999999" would spell out a million digits
        return text
    return canonical(parsed)


def _key_or_self(name: str) -> str:
    try:
        return label_key(name)
    except ValueError:
        return name


def _spelling(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value).strip()


def multi_values(value: Any) -> list[Any]:
    """The labels of one multi-label cell: a list as is, a string split at commas (a blank
    cell: no label)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    text = str(value)
    return text.split(",") if text.strip() else []


def _multi_problem(part: Any) -> str | None:
    """Why one label of a multi-label row cannot be a label name, else None."""
    if part is None or isinstance(part, bool):  # JSON null or true in a list: no label name
        return f"the label {json.dumps(part)}"
    if isinstance(part, str) and not part.strip():
        return "an empty label"
    if isinstance(part, str) and "," in part:
        return f"the label {part.strip()!r}, whose comma separates labels in a TSV or CSV cell"
    return None


class LabelReader:
    """Reads the label cells of a split: keys per row, the spellings merged, the bad rows."""

    def __init__(
        self,
        problem_type: str,
        label_map: dict[str, str] | None,
        names: Sequence[str] | None = None,
    ) -> None:
        self.multi = problem_type == "multi_label"
        self.mapping = {_key_or_self(n): n for n in names or ()}  # "1" reads as a given "1.0"
        self.mapping.update({label_key(k): v for k, v in (label_map or {}).items()})
        self.spellings: dict[str, set[str]] = {}

    def keys(self, raw: Sequence[Any], where: Where, source: str) -> list[list[str]]:
        """The label names of every row (one per row unless multi_label); errors name the rows."""
        out: list[list[str]] = []
        bad: list[str] = []
        for i, value in enumerate(raw):
            names = []
            for part in multi_values(value) if self.multi else [value]:
                problem = _multi_problem(part) if self.multi else None
                if problem is not None:
                    raise DataError(
                        f"{source}: {where(i)} has {problem} (labels {value!r}); write the labels "
                        'of a row as "a,b" in a cell or ["a", "b"] in JSON, each a non-empty '
                        "name without a comma."
                    )
                if isinstance(part, (list, tuple, dict)):
                    raise DataError(
                        f"{source}: {where(i)} has the label {value!r}, a "
                        f"{type(part).__name__}; one label per row is a string or a number (for "
                        "several labels per row pass --problem-type multi_label)."
                    )
                try:
                    key = label_key(part)
                except ValueError:
                    bad.append(f"{where(i)} ({_spelling(part)!r})")
                    continue
                self.spellings.setdefault(key, set()).add(_spelling(part))
                names.append(self.mapping.get(key, key))
            out.append(names)
        if bad:
            raise DataError(
                f"{source}: {len(bad):,} row{'s have' if len(bad) > 1 else ' has'} a label that reads as a "
                f"number that is not finite: {listing(bad)}. Such a value most often marks a "
                "missing label; fill in or remove these rows."
            )
        return out

    def notes(self) -> list[str]:
        """Notes on labels written in several numeric spellings, or differing only in case."""
        notes = [
            f"label {key} is written as {', '.join(sorted(spelled))}; read as one label"
            for key, spelled in sorted(self.spellings.items())
            if len(spelled) > 1
        ]
        by_case: dict[str, list[str]] = {}
        for key in sorted(self.spellings):
            by_case.setdefault(key.casefold(), []).append(key)
        notes.extend(
            f"labels {', '.join(map(repr, keys))} differ only in case and are read as "
            f"{len(keys)} labels; write them one way if they are one"
            for keys in by_case.values()
            if len(keys) > 1
        )
        numbers = [number(key) for key in self.spellings]
        if (
            len(numbers) > MANY_NUMERIC_LABELS
            and all(n is not None for n in numbers)
            and any(n != n.to_integral_value() for n in numbers if n is not None and n.is_finite())
        ):
            notes.append(
                f"the {len(numbers)} labels are all numbers, not all whole: if they are scores "
                "on a scale, train a regression with --problem-type regression"
            )
        return notes


def case_hint(unknown: Sequence[str], names: Sequence[str], whose: str) -> str:
    """ "; these differ from {whose} only in case: 'POS' (... has 'pos')", or "" if none does."""
    folded = {n.casefold(): n for n in names}
    cased = [
        f"{u!r} ({whose} have {folded[u.casefold()]!r})" for u in unknown if u.casefold() in folded
    ]
    return f"; these differ from {whose} only in case: {', '.join(cased)}" if cased else ""


def order_labels(keys: set[str], given: Sequence[str] | None, source: str) -> list[str]:
    """The label order: `given`, else sorted (numerically where every label is a number)."""
    if given:
        names = list(given)
        unknown = sorted(keys - set(names))
        if unknown:
            hint = case_hint(unknown, names, "the task's labels")
            raise DataError(
                f"{source}: labels {unknown} are not among the expected {names}{hint}; write the "
                "labels as the task was trained on them."
            )
        return names
    if all(number(k) is not None for k in keys):
        return sorted(keys, key=lambda k: (number(k), k))
    return sorted(keys)


def targets(raw: Sequence[Any], where: Where, source: str) -> list[float]:
    """Regression targets as floats; a value that is not a finite number is an error naming its row."""
    out: list[float] = []
    bad: list[str] = []
    for i, value in enumerate(raw):
        try:
            if isinstance(value, (bool, list, tuple, dict)):
                raise ValueError
            target = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            bad.append(f"{where(i)} ({_spelling(value)!r})")
            continue
        if not math.isfinite(target):
            bad.append(f"{where(i)} ({_spelling(value)!r})")
            continue
        out.append(target)
    if bad:
        raise DataError(
            f"{source}: {len(bad):,} row{'s have' if len(bad) > 1 else ' has'} a target that is not a finite "
            f"number: {listing(bad)}. Regression needs a finite number in every row; fix or remove "
            "these rows."
        )
    return out
