"""A local Hugging Face model folder's config.json, read without torch: what every command that
takes `--model` checks first, so a folder that is no model is one line naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bitfit_deploy.errors import ModelError
from bitfit_deploy.json_fields import read_json_file


def read_config(folder: str | Path) -> dict[str, Any]:
    """The folder's config.json as a dict; ModelError (one line) if the folder or file is unusable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(
            f"model folder {str(folder)!r} does not exist; pass --model with a local Hugging Face "
            "model folder (nothing is downloaded from a hub)."
        )
    path = folder / "config.json"
    if not path.is_file():
        raise ModelError(
            f"{str(folder)!r} is not a Hugging Face model folder (it has no config.json); pass "
            "--model with a folder that `from_pretrained` loads (nothing is downloaded from a hub)."
        )
    config = read_json_file(path, ModelError, "the model folder is damaged")
    if not isinstance(config, dict) or not isinstance(config.get("model_type", ""), str):
        raise ModelError(f"{path} is not a model config (no object with a model_type string).")
    return config


OFFSET_POSITIONS = ("roberta", "xlm-roberta")
"""Model types whose position ids start after the padding index, so fewer positions hold tokens."""


def position_limit(config: dict[str, Any]) -> int:
    """The most tokens (special ones included) one input may have: the model's position embeddings,
    less the slots RoBERTa-style models keep before their first position (padding index + 1)."""
    limit = config.get("max_position_embeddings", 512)
    if isinstance(limit, bool) or not isinstance(limit, int):
        limit = 512
    if config.get("model_type") in OFFSET_POSITIONS:
        pad = config.get("pad_token_id", 1)  # RobertaConfig's default
        limit -= (pad if isinstance(pad, int) and not isinstance(pad, bool) else 1) + 1
    return limit
