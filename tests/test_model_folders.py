"""A folder that is not a loadable model (empty, no config, a damaged config, no or damaged
weights) is one ModelError line naming it, never transformers' multi-line message."""

from __future__ import annotations

import shutil

import pytest

from bitfit_deploy.errors import ModelError
from bitfit_deploy.modeling import load_encoder


def _damage(folder, how: str) -> None:
    weights = next(p for p in folder.iterdir() if p.name.startswith(("model.", "pytorch_model")))
    if how == "empty":
        for p in folder.iterdir():
            p.unlink() if p.is_file() else shutil.rmtree(p)
    elif how == "no config":
        (folder / "config.json").unlink()
    elif how == "config not JSON":
        (folder / "config.json").write_text("{not json")
    elif how == "no weights":
        weights.unlink()
    elif how == "cut weights":
        weights.write_bytes(weights.read_bytes()[:200])


@pytest.mark.parametrize(
    "how", ["empty", "no config", "config not JSON", "no weights", "cut weights"]
)
def test_a_folder_that_is_no_model_is_one_line(tiny_bert, tmp_path, how):
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    _damage(folder, how)
    with pytest.raises(ModelError) as info:
        load_encoder(str(folder))
    message = str(info.value)
    assert str(folder) in message and "\n" not in message, message


@pytest.mark.parametrize("how", ["empty", "no config", "config not JSON"])
def test_train_refuses_such_a_folder_before_anything_else(tiny_bert, toy_tsv, tmp_path, how):
    """train reads the model's config and tokenizer for its data summary, before the model."""
    from click.testing import CliRunner

    from bitfit_deploy.cli import cli

    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    _damage(folder, how)
    args = ["train", "--task", "t", "--train", str(toy_tsv(16)), "--model", str(folder)]
    result = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "t.safetensors")])
    assert result.exit_code == 1 and "ModelError" in result.output, result.output
    assert str(folder) in result.output and len(result.output.strip().splitlines()) <= 2
