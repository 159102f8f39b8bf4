"""Names shared by training, export and runtime: the one place they are defined.

Bias inputs of the ONNX graph and bias keys of a delta file are both the base encoder's
parameter names, as `AutoModel.from_pretrained(base).named_parameters()` names them.
This module imports numpy-free, torch-free Python only: the runtime depends on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

HEAD_WEIGHT = "head.weight"
"""Head weight: `[num_labels, hidden]` in a delta, `[batch, num_labels, hidden]` in the graph."""
HEAD_BIAS = "head.bias"
"""Head bias: `[num_labels]` in a delta, `[batch, num_labels]` in the graph."""
HEAD_KEYS = (HEAD_WEIGHT, HEAD_BIAS)

LOGITS = "logits"
"""The graph's one output, `[batch, num_labels]`."""

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"
TEXT_INPUTS = (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)
"""Every text input a graph may take (an encoder takes those of `modeling.encoder_inputs`)."""

POOLINGS = ("mean", "cls", "pooler")
"""How the encoder output becomes one vector: mean over the attention mask, first token, model pooler."""

PROBLEM_TYPES = ("single_label", "multi_label", "regression")

TASK_INPUTS = ("single", "pair", "unknown")
"""What one input of a task is: one text, a (text, text_pair) pair, or "unknown" (either is
accepted: a delta written before the arity was recorded, whose training columns do not tell)."""

POOLER_PREFIX = "pooler."

TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
TASK_NAME_RULE = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
"""TASK_NAME in words, for every message that states it."""
"""A task name (match it whole): also a file name in a bundle's `tasks/` and the server's task
store, and a URL segment, so letters, digits, '.', '_', '-', no leading dot, 1-128 characters."""


def check_task_name(name: object, fix: str) -> str:
    """`name` if it is a TASK_NAME, else InvalidInputError saying the rule and `fix` (what to do)."""
    from bitfit_deploy.errors import InvalidInputError, shown

    if isinstance(name, str) and TASK_NAME.fullmatch(name):
        return name
    raise InvalidInputError(
        f"task name {shown(name)} is not usable: it names files and URLs, so use "
        f"{TASK_NAME_RULE}; {fix}."
    )


def is_bias(name: str) -> bool:
    """True for a bias parameter name (`...bias`, including LayerNorm biases)."""
    return name == "bias" or name.endswith(".bias")


def graph_bias_names(parameter_names: Iterable[str], pooling: str) -> list[str]:
    """The bias inputs of a graph that pools with `pooling`, in parameter order.

    The pooler's biases are inputs only when the graph pools through the pooler; otherwise
    the pooler is not part of the graph at all.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    return [
        n
        for n in parameter_names
        if is_bias(n) and (pooling == "pooler" or not n.startswith(POOLER_PREFIX))
    ]


def shortest_max_length(pair_specials: int) -> int:
    """The least max length (tokens, special ones included) that train, export and the runtime
    accept: a pair's special tokens and one token of each text. Below a tokenizer's special
    tokens, truncation does not apply at all, and inputs run past the position table."""
    return pair_specials + 2
