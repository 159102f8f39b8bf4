"""The sentence-transformers folder `merge` writes for tasks no transformers classifier expresses.

Layout (the keys the packaged MiniLM's own folder uses; sentence-transformers 3 to 6 load it):

    modules.json, config_sentence_transformers.json
    0_Transformer/  the encoder with merged biases, its tokenizer, sentence_bert_config.json
    1_Pooling/      config.json: the task's pooling (mean or first token)
    2_Dense/        config.json + model.safetensors: the task's head, identity activation

`SentenceTransformer(folder).encode(texts)` then returns the task's logits. The folder has no
`config.json` at its root, so transformers' `Auto*` loaders refuse it instead of building a
randomly initialised classification head on top of the encoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from bitfit_deploy.errors import ModelError
from bitfit_deploy.modeling import TaskModel, load_encoder

TRANSFORMER_DIR = "0_Transformer"
POOLING_DIR = "1_Pooling"
DENSE_DIR = "2_Dense"
DENSE_WEIGHTS = "model.safetensors"
IDENTITY = "torch.nn.modules.linear.Identity"
_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
}
_MODULES = [
    (TRANSFORMER_DIR, "sentence_transformers.models.Transformer"),
    (POOLING_DIR, "sentence_transformers.models.Pooling"),
    (DENSE_DIR, "sentence_transformers.models.Dense"),
]


def write_st_folder(model: TaskModel, tokenizer: Any, max_length: int, folder: Path) -> None:
    """Write `model` (encoder, pooling, head) into `folder` as a sentence-transformers model."""
    from safetensors.torch import save_file

    if model.pooling not in ("mean", "cls"):
        raise ModelError(
            f"pooling {model.pooling!r} has no sentence-transformers Pooling module; "
            "merge a task trained with --pooling mean or cls."
        )
    encoder_dir = folder / TRANSFORMER_DIR
    model.encoder.save_pretrained(encoder_dir)
    save_tokenizer(tokenizer, encoder_dir, model.text_inputs)
    _write_json(
        encoder_dir / "sentence_bert_config.json",
        {"max_seq_length": int(max_length), "do_lower_case": False},
    )
    hidden, num_labels = model.head.in_features, model.head.out_features
    _write_json(
        folder / POOLING_DIR / "config.json",
        {
            "word_embedding_dimension": hidden,
            **{key: name == model.pooling for name, key in _POOLING_KEYS.items()},
        },
    )
    _write_json(
        folder / DENSE_DIR / "config.json",
        {
            "in_features": hidden,
            "out_features": num_labels,
            "bias": True,
            "activation_function": IDENTITY,
        },
    )
    save_file(
        {
            "linear.weight": model.head.weight.detach().float().cpu().contiguous(),
            "linear.bias": model.head.bias.detach().float().cpu().contiguous(),
        },
        str(folder / DENSE_DIR / DENSE_WEIGHTS),
    )
    _write_json(
        folder / "modules.json",
        [
            {"idx": i, "name": str(i), "path": path, "type": kind}
            for i, (path, kind) in enumerate(_MODULES)
        ],
    )
    import transformers

    _write_json(
        folder / "config_sentence_transformers.json",
        {
            "__version__": {"transformers": transformers.__version__, "pytorch": torch.__version__},
            "model_type": "SentenceTransformer",
            "prompts": {},
            "default_prompt_name": None,
        },
    )


def read_st_folder(folder: Path, pooling: str, problem_type: str) -> TaskModel:
    """Rebuild the task model from a folder that `write_st_folder` wrote."""
    from safetensors.torch import load_file

    encoder, _ = load_encoder(str(folder / TRANSFORMER_DIR))
    head = load_file(str(folder / DENSE_DIR / DENSE_WEIGHTS))
    model = TaskModel(encoder, head["linear.weight"].shape[0], pooling, problem_type)
    with torch.no_grad():
        model.head.weight.copy_(head["linear.weight"])
        model.head.bias.copy_(head["linear.bias"])
    return model.eval()


def save_tokenizer(tokenizer: Any, folder: Path, inputs: list[str]) -> None:
    """Save `tokenizer` so that it returns exactly the encoder's `inputs`, as the runtime feeds it."""
    tokenizer.save_pretrained(folder)
    if set(tokenizer.model_input_names) == set(inputs):
        return
    # e.g. a RoBERTa-type encoder (one token type) under a BERT tokenizer: token_type_ids of a
    # pair's second text would index past its embedding table. save_pretrained drops an
    # attribute set after loading, so the saved config carries it.
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["model_input_names"] = list(inputs)
    _write_json(config_file, config)


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")
