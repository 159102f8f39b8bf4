"""Exact transformers `*ForSequenceClassification` models for the tasks they can express.

BERT's classifier is pooler + linear; RoBERTa's and XLM-R's is dense + tanh on the first token
(their pooler, under another name) + linear. Both equal our `pooler` pooling + head, so those
tasks merge into a folder `AutoModelForSequenceClassification` loads. Mean and first-token
pooling have no such class (DistilBERT's head adds a ReLU layer): see `st_folder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bitfit_deploy.delta import DeltaMetadata
from bitfit_deploy.modeling import TaskModel

HF_PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}
_POOLER = "encoder.pooler.dense."
_ENCODER = "encoder."
_HEAD = "head."


@dataclass(frozen=True)
class _Spec:
    """Where a classifier class keeps our encoder, pooler and head parameters."""

    class_name: str
    encoder: str
    head: str
    pooler: str | None = None
    """Prefix of the classifier's own copy of the pooler's dense layer; None: in the encoder."""


_SPECS = {
    "bert": _Spec("BertForSequenceClassification", "bert.", "classifier."),
    "roberta": _Spec(
        "RobertaForSequenceClassification", "roberta.", "classifier.out_proj.", "classifier.dense."
    ),
    "xlm-roberta": _Spec(
        "XLMRobertaForSequenceClassification",
        "roberta.",
        "classifier.out_proj.",
        "classifier.dense.",
    ),
}


def exact_classifier(model_type: str, pooling: str) -> str | None:
    """The `*ForSequenceClassification` class equal to our task model, or None where none is."""
    spec = _SPECS.get(model_type)
    return spec.class_name if spec is not None and pooling == "pooler" else None


def to_classifier(model: TaskModel, meta: DeltaMetadata) -> nn.Module:
    """The exact `*ForSequenceClassification` model equal to `model`, labelled from `meta`."""
    import transformers

    encoder = model.encoder
    spec = _SPECS[encoder.config.model_type]
    config = encoder.config.__class__.from_dict(encoder.config.to_dict())
    config.num_labels = model.head.out_features
    config.problem_type = HF_PROBLEM_TYPES[meta.problem_type]
    labels = meta.labels if meta.problem_type != "regression" else ["score"]
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.architectures = [spec.class_name]
    classifier = getattr(transformers, spec.class_name)(config)
    state = {_classifier_key(spec, k): v for k, v in model.state_dict().items()}
    classifier.load_state_dict(state, strict=True)  # every parameter placed, none left random
    return classifier.eval()


def from_classifier(folder: Path, meta: DeltaMetadata) -> TaskModel:
    """Rebuild our task model from a folder holding a classifier that `to_classifier` made."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    classifier = AutoModelForSequenceClassification.from_pretrained(
        folder, local_files_only=True, attn_implementation="eager"
    )
    spec = _SPECS[classifier.config.model_type]
    encoder = AutoModel.from_config(classifier.config, attn_implementation="eager")
    model = TaskModel(encoder, classifier.config.num_labels, meta.pooling, meta.problem_type)
    theirs = classifier.state_dict()
    with torch.no_grad():
        model.load_state_dict({k: theirs[_classifier_key(spec, k)] for k in model.state_dict()})
    return model.eval()


def _classifier_key(spec: _Spec, key: str) -> str:
    """The classifier's name for our task model's parameter `key`."""
    if key.startswith(_HEAD):
        return spec.head + key[len(_HEAD) :]
    if spec.pooler is not None and key.startswith(_POOLER):
        return spec.pooler + key[len(_POOLER) :]
    return spec.encoder + key[len(_ENCODER) :]
