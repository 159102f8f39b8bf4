"""Checks of the runtime's constructor arguments: a wrong type or range is one InvalidInputError
naming the argument, not a TypeError from deep inside ONNX Runtime (or a silent truthiness)."""

from __future__ import annotations

from typing import Any

from bitfit_deploy.errors import InvalidInputError
from bitfit_deploy.runtime.inputs import describe

MOST_THREADS = 4096
"""More intra-op threads than any machine has: beyond it, a typo."""
MOST_BATCH = 65536
"""More rows per run than any batch needs: beyond it, a typo."""


def check_count(name: str, value: Any, most: int, optional: bool = False) -> None:
    """`value` is a whole number from 1 to `most` (or None when `optional`)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        allowed = " (or None)" if optional else ""
        raise InvalidInputError(
            f"{name} must be a whole number from 1 to {most}{allowed}, got {_shown(value)}."
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


def _shown(value: Any) -> str:
    return (
        repr(value)
        if isinstance(value, (int, float, str)) and len(repr(value)) <= 40
        else describe(value)
    )
