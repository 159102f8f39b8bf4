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
