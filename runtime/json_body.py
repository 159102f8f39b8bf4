"""Reading a request body as JSON so that no body, whatever its shape, can crash a route.

`json.loads` recurses once per nesting level (100,000 `[` raise RecursionError) and refuses
integers of more than 4,300 digits with a plain ValueError; either would be a 500. `read_json`
turns every failure into MalformedJSONError (HTTP 400 `malformed_json`) and refuses documents
nested deeper than `MAX_DEPTH`, so nothing downstream (error messages, responses) recurses deeply.
"""

from __future__ import annotations

import json
from typing import Any

from bitfit_deploy.errors import MalformedJSONError

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects read; V2 tensors of rank up to 30 fit."""


def read_json(body: bytes | str, what: str = "the body") -> Any:
    """Parse `body` as JSON (UTF-8, -16 or -32) nested at most MAX_DEPTH deep, or MalformedJSONError."""
    try:
        value = json.loads(body)
    except RecursionError:
        value = None
        deep = True
    except json.JSONDecodeError as exc:
        raise MalformedJSONError(f"{what} is not valid JSON ({exc}).") from None
    except UnicodeDecodeError:
        raise MalformedJSONError(f"{what} is not UTF-8 text; send UTF-8 JSON.") from None
    except ValueError:  # an integer too long to convert
        raise MalformedJSONError(
            f"{what} holds a number of more than 4,300 digits; send numbers of sane size."
        ) from None
    else:
        deep = _deeper_than(value, MAX_DEPTH)
    if deep:
        raise MalformedJSONError(
            f"{what} nests arrays or objects deeper than {MAX_DEPTH} levels; flatten it."
        )
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """True when `value` nests lists and dicts more than `limit` deep; iterative, no recursion."""
    stack = [(value, 1)] if isinstance(value, (list, dict)) else []
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (list, dict)))
    return False
