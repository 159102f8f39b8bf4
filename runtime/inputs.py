"""One predict input checked against its task: text only, well-formed Unicode, the task's arity.

The runtime, REST, V2 and the CLI all read inputs through `check_input`, so an input means the
same wherever it arrives and a bad one is refused (InvalidInputError, HTTP 422) before it can
reach the tokenizer or a batch. An input is a text, or a (text, text_pair) pair given as a tuple
or a two-item list. A task trained on single texts refuses pairs and a pair task refuses single
texts; a task whose arity is "unknown" (an older delta) takes either. Text holding a lone UTF-16
surrogate (a client cut a string inside a character) is refused, never replaced: the model would
otherwise answer for a text nobody sent.
"""

from __future__ import annotations

import re
from typing import Any

from bitfit_deploy.errors import InvalidInputError, describe
from bitfit_deploy.runtime.results import TaskInfo
from bitfit_deploy.runtime.tokenize import TextInput

_SURROGATE = re.compile("[\ud800-\udfff]")
_TAKES = {
    "single": "one text per input",
    "pair": "a (text, text_pair) pair per input",
    "unknown": "one text or a (text, text_pair) pair per input",
}


def check_input(item: Any, info: TaskInfo, index: int) -> TextInput:
    """`item` as the tokenizer reads it, or InvalidInputError naming input `index` and the task."""
    where = f"input {index} for task {info.name!r}"
    takes = _TAKES.get(info.inputs, _TAKES["unknown"])
    if isinstance(item, str):
        texts: tuple[str, ...] = (item,)
    elif isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise InvalidInputError(
                f"{where} is {describe(item)}; a pair is exactly two texts [text, text_pair]. "
                f"The task takes {takes}."
            )
        for side, part in zip(("text", "text_pair"), item, strict=True):
            if not isinstance(part, str):
                raise InvalidInputError(
                    f"{where}: the {side} of the pair is {describe(part)}, not a text; a pair is "
                    f"two texts [text, text_pair]. The task takes {takes}."
                )
        texts = (item[0], item[1])
    else:
        raise InvalidInputError(
            f"{where} is {describe(item)}; send a text or a [text, text_pair] pair of texts. "
            f"The task takes {takes}."
        )
    if info.inputs == "pair" and len(texts) == 1:
        raise InvalidInputError(
            f"{where} is one text, but the task was trained on pairs and takes {takes}; "
            "send [text, text_pair]."
        )
    if info.inputs == "single" and len(texts) == 2:
        raise InvalidInputError(
            f"{where} is a pair, but the task was trained on single texts and takes {takes}; "
            "send one string."
        )
    for side, text in zip(("text", "text_pair"), texts, strict=False):
        if not text or text.isspace():  # as training and `predict` read it (no copy, as strip)
            raise InvalidInputError(
                f"{where}: the {side} is empty or blank; there is no text to predict."
            )
        bad = _SURROGATE.search(text)
        if bad is not None:
            raise InvalidInputError(
                f"{where}: the {side} is not valid Unicode (a lone surrogate U+{ord(bad.group()):04X} "
                f"at character {bad.start()}, as when a client cuts a string inside a character); "
                "send well-formed UTF-8 text."
            )
    return texts[0] if len(texts) == 1 else (texts[0], texts[1])
