"""Checks of the Python API's arguments (`Runtime`, `export_bundle`): a wrong type or range is one
InvalidInputError naming the argument, not a TypeError from deep inside ONNX Runtime or torch, or
a value silently taken for its truthiness. The CLI's click types never get here."""

from __future__ import annotations

import numbers
import os
from typing import Any

from bitfit_deploy.errors import InvalidInputError, describe

MOST_THREADS = 4096
"""More intra-op threads than any machine has: beyond it, a typo."""
MOST_BATCH = 65536
"""More rows per run than any batch needs: beyond it, a typo."""


def check_count(name: str, value: Any, most: int, optional: bool = False) -> None:
    """`value` is a whole number from 1 to `most` (or None when `optional`)."""
    if optional and value is None:
        return
    if not is_whole(value) or not 1 <= value <= most:
        allowed = " (or None)" if optional else ""
        raise InvalidInputError(
            f"{name} must be a whole number from 1 to {most}{allowed}, got {_shown(value)}."
        )


def check_whole(name: str, value: Any, optional: bool = False) -> None:
    """`value` is a whole number (or None when `optional`); its range is the caller's to check."""
    if not ((optional and value is None) or is_whole(value)):
        allowed = " (or None)" if optional else ""
        raise InvalidInputError(f"{name} must be a whole number{allowed}, got {_shown(value)}.")


def check_seconds(name: str, value: Any, optional: bool = False, unit: str = "seconds") -> None:
    """`value` is a finite number of `unit`, 0 or more (or None when `optional`: no limit)."""
    if optional and value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0 <= value < float("inf")
    ):
        allowed = " (or None for no limit)" if optional else ""
        raise InvalidInputError(
            f"{name} must be a number of {unit}, 0 or more{allowed}, got {_shown(value)}."
        )


def check_flag(name: str, value: Any, optional: bool = False) -> None:
    """`value` is True or False (or None when `optional`)."""
    if not (isinstance(value, bool) or (optional and value is None)):
        allowed = ", False or None" if optional else " or False"
        raise InvalidInputError(f"{name} must be True{allowed}, got {_shown(value)}.")


def check_text(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """`value` is a string (its value is checked where it is used); `choices` name the usual ones."""
    if not isinstance(value, str):
        raise InvalidInputError(
            f"{name} must be a string such as {', '.join(map(repr, choices))}, got {_shown(value)}."
        )


def check_path(name: str, value: Any, optional: bool = False) -> None:
    """`value` is a path (a string or os.PathLike), or None when `optional`."""
    if not (isinstance(value, (str, os.PathLike)) or (optional and value is None)):
        raise InvalidInputError(f"{name} must be a path, got {_shown(value)}.")


def check_list(name: str, value: Any, of: str) -> None:
    """`value` is a list or tuple of paths (`of="path"`) or of strings (`of="text"`)."""
    kinds = (str, os.PathLike) if of == "path" else (str,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, kinds) for v in value):
        raise InvalidInputError(
            f"{name} must be a list of {of}s, got {_shown(value)}"
            + (f" (a {of} in a list: [{value!r}])." if isinstance(value, kinds) else ".")
        )


def is_whole(value: Any) -> bool:
    """An int or a numpy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    if value is None:
        return "None"
    return (
        repr(value)
        if isinstance(value, (int, float, str)) and len(repr(value)) <= 40
        else describe(value)
    )
