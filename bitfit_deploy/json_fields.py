"""Reading JSON files anyone can edit (manifests, delta metadata, merged-folder task files, model
configs) and checking parsed JSON against a dataclass's field types: one reader, one checker."""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from pathlib import Path
from typing import Any


def read_json_file(path: Path, error: type[Exception], fix: str) -> Any:
    """`path` parsed as JSON; `error` naming the file and `fix` if it is not UTF-8 JSON (too deep
    included)."""
    from bitfit_deploy.reading import read_regular

    data = read_regular(path, "file", error)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(f"{path} is not valid JSON ({exc}); {fix}.") from exc


def required_fields(cls: type) -> list[str]:
    """The fields of dataclass `cls` without a default: the keys a file must hold."""
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def mismatch(cls: type, data: dict[str, Any]) -> str | None:
    """A line naming the first field of `data` whose value does not fit `cls`'s type, else None.

    Only `cls`'s fields present in `data` are checked; unknown keys are another reader's.
    """
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in data and not conforms(data[f.name], hints[f.name]):
            shown = json.dumps(data[f.name], default=repr)[:80]
            return f"{f.name!r} is {shown}, not {_type_name(hints[f.name])}"
    return None


def conforms(value: Any, hint: Any) -> bool:
    """Whether parsed JSON `value` fits `hint`: str, int, float (an int too), bool, list[...],
    dict[...], Any, or a dataclass (an object with exactly its fields)."""
    if hint is Any:
        return True
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):  # each member by these rules: no bool for int
        return any(conforms(value, member) for member in args)
    if origin is list:
        return isinstance(value, list) and all(conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items()
        )
    if dataclasses.is_dataclass(hint):
        hints = _hints(hint)
        return (
            isinstance(value, dict)
            and set(value) == hints.keys()
            and all(conforms(value[n], hints[n]) for n in hints)
        )
    return isinstance(value, hint)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """`cls`'s field types, evaluated once (each evaluation parses the annotation strings)."""
    return typing.get_type_hints(cls)


def _type_name(hint: Any) -> str:
    if dataclasses.is_dataclass(hint):
        fields = ", ".join(f'"{name}": {_type_name(t)}' for name, t in _hints(hint).items())
        return f"{{{fields}}}"
    return (
        str(hint) if typing.get_origin(hint) is not None else getattr(hint, "__name__", str(hint))
    )
