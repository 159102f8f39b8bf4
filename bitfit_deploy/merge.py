"""Merge a bias delta into its base: a normal Hugging Face model folder for users who want one.

The folder holds the encoder with base + delta biases (`AutoModel.from_pretrained` loads it),
the tokenizer, our head in `head.safetensors` and the task metadata in `bitfit_task.json`.
Where our head equals a transformers classification head (BERT-family with the model's own
pooler) the folder is also a complete `BertForSequenceClassification`. Other poolings (mean,
cls) have no exact transformers counterpart; `load_model_folder` rebuilds the task model then.
`train --method full` writes the same layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bitfit_deploy._io import atomic_dir
from bitfit_deploy.contract import HEAD_BIAS, HEAD_WEIGHT
from bitfit_deploy.delta import DeltaMetadata, load_delta
from bitfit_deploy.errors import DeltaFormatError, FingerprintMismatchError
from bitfit_deploy.fingerprint import short
from bitfit_deploy.modeling import (
    TaskModel,
    apply_delta,
    base_fingerprint,
    default_model_path,
    load_encoder,
)

TASK_JSON = "bitfit_task.json"
HEAD_FILE = "head.safetensors"
HF_PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}


@dataclass
class MergeResult:
    """Where the merged model went and what kind of folder it is."""

    output: Path
    sequence_classification: bool
    """True when the folder is also a complete `*ForSequenceClassification` model."""
    description: str


def merge(
    delta_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model: str | None = None,
    force: bool = False,
) -> MergeResult:
    """Merge the delta at `delta_path` into its base (`model`, else the delta's hint, else the packaged one)."""
    delta = load_delta(delta_path)
    meta = delta.metadata
    encoder, path = load_encoder(model or _base_hint(meta))
    found = base_fingerprint(encoder)
    if found != meta.base_fingerprint:
        raise FingerprintMismatchError(
            f"{str(delta_path)!r} (task {meta.task!r}) was trained on base {short(meta.base_fingerprint)} "
            f"but {path!r} is {short(found)}; pass --model with the base it was trained on "
            f"({meta.base_model or 'see bitfit-deploy inspect'})."
        )
    from transformers import AutoTokenizer

    task_model = apply_delta(encoder, delta)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    complete = write_model_folder(
        task_model, tokenizer, meta, output, force=force, merged_from=str(delta_path)
    )
    if complete:
        what = (
            f"a complete {type(encoder).__name__.replace('Model', '')}ForSequenceClassification folder "
            "(AutoModelForSequenceClassification loads it; the merged encoder and head.safetensors too)"
        )
    else:
        what = (
            f"the encoder with merged biases (AutoModel loads it) and the head in {HEAD_FILE}; no "
            f"*ForSequenceClassification folder, because pooling {meta.pooling!r} on "
            f"{encoder.config.model_type} has no exact transformers head (load it with "
            "bitfit_deploy.merge.load_model_folder)"
        )
    return MergeResult(Path(output), complete, what)


def write_model_folder(
    model: TaskModel,
    tokenizer: Any,
    meta: DeltaMetadata,
    output: str | os.PathLike[str],
    force: bool = False,
    **extra: Any,
) -> bool:
    """Write encoder + tokenizer + head + metadata atomically; return True if it is a full classifier."""
    from safetensors.torch import save_file

    classifier = _sequence_classifier(model, meta)
    with atomic_dir(output, force=force) as tmp:
        (classifier or model.encoder).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_file(
            {
                HEAD_WEIGHT: model.head.weight.detach().float().cpu().contiguous(),
                HEAD_BIAS: model.head.bias.detach().float().cpu().contiguous(),
            },
            str(tmp / HEAD_FILE),
        )
        info = {
            **dataclasses.asdict(meta),
            "sequence_classification": classifier is not None,
            **extra,
        }
        (tmp / TASK_JSON).write_text(json.dumps(info, indent=2))
    return classifier is not None


def load_model_folder(folder: str | os.PathLike[str]) -> tuple[TaskModel, DeltaMetadata]:
    """Rebuild the task model (encoder + pooling + head) from a merged or full-model folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    info_file = folder / TASK_JSON
    if not info_file.is_file():
        raise DeltaFormatError(
            f"{str(folder)!r} lacks {TASK_JSON}; it was not written by bitfit-deploy."
        )
    info = json.loads(info_file.read_text())
    known = {f.name for f in dataclasses.fields(DeltaMetadata)}
    meta = DeltaMetadata(**{k: v for k, v in info.items() if k in known})
    encoder, _ = load_encoder(str(folder))
    head = load_file(str(folder / HEAD_FILE))
    model = TaskModel(encoder, head[HEAD_WEIGHT].shape[0], meta.pooling, meta.problem_type)
    with torch.no_grad():
        model.head.weight.copy_(head[HEAD_WEIGHT])
        model.head.bias.copy_(head[HEAD_BIAS])
    return model.eval(), meta


def _base_hint(meta: DeltaMetadata) -> str:
    hint = meta.base_model
    return hint if hint and Path(hint).is_dir() else default_model_path()


def _sequence_classifier(model: TaskModel, meta: DeltaMetadata) -> Any | None:
    """A BertForSequenceClassification equal to `model`, where the pooling makes one exact."""
    encoder = model.encoder
    if encoder.config.model_type != "bert" or meta.pooling != "pooler":
        return None
    from transformers import BertForSequenceClassification

    config = encoder.config.__class__.from_dict(encoder.config.to_dict())
    config.num_labels = model.head.out_features
    config.problem_type = HF_PROBLEM_TYPES[meta.problem_type]
    labels = meta.labels if meta.problem_type != "regression" else ["score"]
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.architectures = ["BertForSequenceClassification"]
    classifier = BertForSequenceClassification(config)
    classifier.bert.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        classifier.classifier.weight.copy_(model.head.weight)
        classifier.classifier.bias.copy_(model.head.bias)
    return classifier.eval()
