"""Typed errors: every message says what was wrong and what to do about it.

Each subclass also inherits the builtin it refines, so callers may catch either.
The CLI maps them to exit messages and the server to HTTP statuses, each in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class BitFitError(Exception):
    """Base class of every error bitfit-deploy raises on purpose."""


def first_line(exc: BaseException) -> str:
    """A library exception's message cut to its first line (transformers' run over several), for
    wrapping it in a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class DataError(BitFitError, ValueError):
    """The training or evaluation data cannot be used as given (columns, labels, emptiness)."""


class ModelError(BitFitError, ValueError):
    """The base model cannot be used: no bias terms, unsupported architecture, unreadable folder."""


class UnsupportedArchitectureError(ModelError):
    """The architecture has no per-row bias export yet."""


class NoBiasError(ModelError):
    """The model has no bias terms to fine-tune (LLaMA-style models, for one)."""


class DeltaFormatError(BitFitError, ValueError):
    """A bias-delta file is corrupt, truncated, or not a bitfit-deploy delta."""


class FingerprintMismatchError(BitFitError, ValueError):
    """A delta was trained on another base model than the one it is applied to."""


class BundleError(BitFitError, ValueError):
    """An export bundle is missing files, has a bad manifest, or fails its checksums."""


class OutputExistsError(BitFitError, FileExistsError):
    """The output path exists and --force was not given."""


class OutputPathError(BitFitError, OSError):
    """The output cannot be written there: a parent is a file, or the folder refuses writes."""


class TaskNotFoundError(BitFitError, KeyError):
    """A request named a task that is not loaded."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class TaskExistsError(BitFitError, ValueError):
    """A task of that name is loaded already and replace was not asked for."""


class InvalidInputError(BitFitError, ValueError):
    """Inputs to predict are empty, not text, or otherwise malformed."""


class MalformedJSONError(BitFitError, ValueError):
    """A request body is not JSON, or nests deeper than the server reads."""


class ProviderUnavailableError(BitFitError, RuntimeError):
    """The requested ONNX Runtime execution provider is not available on this machine."""


class IncompatibleTaskError(BitFitError, ValueError):
    """A delta fits the base but not the bundle: another pooling, unknown biases or wrong widths."""


class ExportError(BitFitError, RuntimeError):
    """The exported graph breaks the bundle contract (e.g. a bias input that is also an initializer)."""


class ExportOptionError(BitFitError, ValueError):
    """An export option asks for something unavailable (unknown quantization, --bake of a task not given)."""


def describe(value: Any) -> str:
    """A short description of any value for an error message; never recurses into it."""
    if isinstance(value, str):
        return f"the text {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {_count(len(value), 'item')}"
    if isinstance(value, dict):
        return f"an object of {_count(len(value), 'key')}"
    if value is None:
        return "null"
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple):  # a numpy (or similar) array
        return f"an array of shape {shape} ({getattr(value, 'dtype', '?')})"
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def shown(value: object, limit: int = 80) -> str:
    """`repr(value)` for a message, cut after `limit` characters with the full length said: a
    name from a URL or a file can be megabytes, and a message (or a log line) need not be."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value):,} characters)" if isinstance(value, str) else ""
    return f"{text[:limit]}...{size}"


SHOWN = 5
"""How many offending items (lines, names) a message lists before it gives only their count."""


def listing(places: Sequence[str], most: int = SHOWN) -> str:
    """The first `most` of `places` joined, with a count of the rest: "line 2, line 5 (and 8 more)"."""
    first = ", ".join(places[:most])
    return first + (f" (and {len(places) - most:,} more)" if len(places) > most else "")
