"""Merge a bias delta into its base: a model folder that the wider ecosystem loads right, or refuses.

Where transformers expresses the task exactly (pooler pooling on BERT, RoBERTa, XLM-R) the folder
is a complete `*ForSequenceClassification` (`AutoModelForSequenceClassification` loads it, labels
included). Elsewhere (mean or first-token pooling, DistilBERT) it is a sentence-transformers folder
whose `encode` returns the task's logits, laid out so that transformers' loaders fail on it rather
than build a random head (see `st_folder`). Both hold `bitfit_task.json` (the task's metadata,
labels and problem type) and a README.md saying how to load the folder and read its logits.
`train --method full` writes the same folders.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitfit_deploy import folder_readme
from bitfit_deploy._io import atomic_dir, check_output
from bitfit_deploy.arguments import check_flag, check_path
from bitfit_deploy.delta import TASK_JSON, DeltaMetadata, load_delta, read_folder_info
from bitfit_deploy.errors import DeltaFormatError, FingerprintMismatchError
from bitfit_deploy.fingerprint import short
from bitfit_deploy.hf_classifier import exact_classifier, from_classifier, to_classifier
from bitfit_deploy.modeling import (
    TaskModel,
    apply_delta,
    base_fingerprint,
    default_model_path,
    load_encoder,
)
from bitfit_deploy.st_folder import read_st_folder, save_tokenizer, write_st_folder

SEQUENCE_CLASSIFICATION = "sequence-classification"
"""Layout: a complete transformers `*ForSequenceClassification` folder."""
SENTENCE_TRANSFORMERS = "sentence-transformers"
"""Layout: a sentence-transformers folder (encoder, pooling, head as a Dense module)."""


@dataclass
class MergeResult:
    """Where the merged model went, how it is laid out and which loader reads it."""

    output: Path
    layout: str
    """SEQUENCE_CLASSIFICATION or SENTENCE_TRANSFORMERS."""
    loader: str
    """The call that loads the folder, e.g. `SentenceTransformer(folder)`."""
    description: str

    @property
    def sequence_classification(self) -> bool:
        """True when the folder is a complete `*ForSequenceClassification` model."""
        return self.layout == SEQUENCE_CLASSIFICATION


def merge(
    delta_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model: str | None = None,
    force: bool = False,
) -> MergeResult:
    """Merge the delta at `delta_path` into its base (`model`, else the delta's hint, else the packaged one)."""
    check_path("delta_path", delta_path)
    check_path("output", output)
    check_path("model", model, optional=True)
    check_flag("force", force)
    delta = load_delta(delta_path)
    check_output(output, force, "output folder")  # before loading the model, not after
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
    layout = write_model_folder(
        task_model, tokenizer, meta, output, force=force, merged_from=str(delta_path)
    )
    if layout == SEQUENCE_CLASSIFICATION:
        classifier = exact_classifier(encoder.config.model_type, meta.pooling)
        loader = "AutoModelForSequenceClassification.from_pretrained(folder)"
        what = f"a complete {classifier} folder; load it with {loader} (labels in its config)"
    else:
        loader = "SentenceTransformer(folder)"
        what = (
            f"a sentence-transformers folder; load it with {loader}, whose encode(texts) returns "
            f"the task's logits (labels, problem type, text pairs: README.md and {TASK_JSON} in "
            f"the folder). No transformers *ForSequenceClassification pools {meta.pooling!r} on "
            f"{encoder.config.model_type} into this head, so AutoModelForSequenceClassification "
            "refuses the folder rather than add a random head"
        )
    return MergeResult(Path(output), layout, loader, what)


def write_model_folder(
    model: TaskModel,
    tokenizer: Any,
    meta: DeltaMetadata,
    output: str | os.PathLike[str],
    force: bool = False,
    **extra: Any,
) -> str:
    """Write the task model, tokenizer, metadata and README atomically; return the layout written."""
    classifier = exact_classifier(model.encoder.config.model_type, meta.pooling)
    layout = SENTENCE_TRANSFORMERS if classifier is None else SEQUENCE_CLASSIFICATION
    with atomic_dir(output, force=force) as tmp:
        if classifier is None:
            write_st_folder(model, tokenizer, meta.max_length, tmp)
        else:
            to_classifier(model, meta).save_pretrained(tmp)
            save_tokenizer(tokenizer, tmp, model.text_inputs)
        readme = folder_readme.render(meta, Path(output).name, classifier)
        (tmp / "README.md").write_text(readme)
        info = {**dataclasses.asdict(meta), "layout": layout, **extra}
        (tmp / TASK_JSON).write_text(json.dumps(info, indent=2))
    return layout


def load_model_folder(folder: str | os.PathLike[str]) -> tuple[TaskModel, DeltaMetadata]:
    """Rebuild the task model (encoder + pooling + head) from a merged or full-model folder."""
    folder = Path(folder)
    info, meta = read_folder_info(folder)
    layout = info.get("layout")
    if layout == SENTENCE_TRANSFORMERS:
        return read_st_folder(folder, meta.pooling, meta.problem_type), meta
    if layout == SEQUENCE_CLASSIFICATION:
        return from_classifier(folder, meta), meta
    raise DeltaFormatError(
        f"{str(folder)!r}: {TASK_JSON} names layout {layout!r}, which this bitfit-deploy does not "
        "read; merge the delta again with this version."
    )


def _base_hint(meta: DeltaMetadata) -> str:
    hint = meta.base_model
    return hint if hint and Path(hint).is_dir() else default_model_path()
