"""Score a task as the runtime serves it on labelled data: metrics, label counts, confusion matrix.

Reads the data with the training reader (`bitfit_deploy.data`, same columns, presets and errors),
predicts with `bitfit_deploy.runtime.Runtime` (ONNX Runtime, no torch) and scores with
`bitfit_deploy.metrics`. `compare_with_torch` also runs the PyTorch reference (base + delta,
`modeling.apply_delta`; needs the train extra) to report the largest logit difference.

Example:
    >>> report = evaluate("bundle/", "sst2", "dev.tsv", preset="sst2")  # doctest: +SKIP
    >>> report.metrics["accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bitfit_deploy import __version__
from bitfit_deploy._io import atomic_file
from bitfit_deploy.arguments import MOST_BATCH, check_count, check_flag, check_path, check_text
from bitfit_deploy.data import Columns, Split, load_task_data
from bitfit_deploy.data_tables import QUOTING
from bitfit_deploy.delta import TaskDelta, load_delta
from bitfit_deploy.errors import (
    DataError,
    FingerprintMismatchError,
    InvalidInputError,
    TaskNotFoundError,
    describe,
)
from bitfit_deploy.manifest import read_manifest
from bitfit_deploy.metrics import (
    DEFAULT_METRIC,
    compute_metrics,
    f1,
    macro_f1,
    undefined_correlation,
)

_CHUNK_ROWS = 256
"""Rows per runtime call: enough for length-sorted runs, small enough for a smooth progress bar."""


@dataclass
class EvalReport:
    """One evaluation: where, what, the metrics and the counts behind them; `to_dict` is the JSON."""

    task: str
    bundle: str
    variant: str
    data: str
    problem_type: str
    labels: list[str]
    metric: str
    """The task's headline metric (the one its training kept the best epoch by)."""
    metrics: dict[str, float | None]
    """None where a metric is undefined (a correlation of constant values or of one row)."""
    rows: int
    label_counts: dict[str, int]
    """Gold rows per label (multi-label: rows holding the label)."""
    predicted_counts: dict[str, int]
    confusion: list[list[int]] | None
    """Single-label only: `confusion[gold][predicted]` in `labels` order."""
    seconds: float
    """Wall-clock time of the predictions (tokenizing included)."""
    truncated: int
    """Inputs cut at `max_length`."""
    max_length: int = 0
    """Tokens an input keeps, as served: the task's max length capped by the bundle's."""
    compare_torch: dict[str, Any] | None = None
    dropped: dict[str, list[str]] = field(default_factory=dict)
    """With `drop_empty`: why rows were skipped -> where (not scored)."""
    created: str = ""
    tool_version: str = __version__
    logits: np.ndarray | None = field(default=None, repr=False)
    """Runtime outputs as logits (softmax-centred for single-label); not part of the JSON."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report (without the logits)."""
        out = asdict(self)
        out.pop("logits")
        out["rows_per_second"] = self.rows / self.seconds if self.seconds > 0 else None
        return out

    def summary(self) -> str:
        """One line: task, rows, metrics, time."""
        shown = ", ".join(
            f"{k} {v:.4f}" if v is not None else f"{k} undefined" for k, v in self.metrics.items()
        )
        line = f"{self.task} ({self.variant}, {self.rows:,} rows, {self.seconds:.1f} s): {shown}"
        if self.compare_torch is not None:
            line += f"; max |logit diff| vs PyTorch {self.compare_torch['max_abs_logit_diff']:.2e}"
        skipped = sum(len(where) for where in self.dropped.values())
        if skipped:
            line += f"; {skipped:,} rows with empty fields skipped"
        return line


def evaluate(
    bundle: str | os.PathLike[str],
    task: str,
    data: str | os.PathLike[str],
    columns: Columns | None = None,
    preset: str | None = None,
    variant: str = "fp32",
    provider: str = "cpu",
    threads: int | None = None,
    batch_size: int = 32,
    max_rows: int | None = None,
    progress: bool = True,
    quoting: str | None = None,
    drop_empty: bool = False,
    parallel: str = "auto",
) -> EvalReport:
    """Predict every row of `data` for `task` with the runtime and score it.

    Args:
        task: a task shipped in the bundle, or the path of a delta file of the bundle's base.
        columns, preset: as for training; unset columns default to the preset's, then to the
            columns the task was trained on (recorded in its delta), then to common names.
        max_rows: score only the first N rows (quick checks).
        quoting, drop_empty: as for training (`--quoting`, `--drop-empty`).
        parallel: as for `Runtime` ("auto", "ops" or "rows").
    """
    from bitfit_deploy.runtime import Runtime

    check_path("bundle", bundle)
    check_path("task", task)
    check_path("data", data)
    check_count("max_rows", max_rows, 1 << 62, optional=True)
    check_count("batch_size", batch_size, MOST_BATCH)
    check_flag("progress", progress)
    check_flag("drop_empty", drop_empty)
    if preset is not None:
        check_text("preset", preset, ("sst2", "rte", "..."))  # its value: get_preset
    if quoting is not None:
        check_text("quoting", quoting, QUOTING)
    if columns is not None and not isinstance(columns, Columns):
        raise InvalidInputError(
            f"columns must be a bitfit_deploy.data.Columns, got {describe(columns)}."
        )

    delta, from_file = _find_delta(bundle, task)
    split = read_eval_data(data, delta, columns, preset, quoting=quoting, drop_empty=drop_empty)
    if max_rows is not None:
        split = Split(
            split.texts[:max_rows],
            split.pairs[:max_rows] if split.pairs is not None else None,
            split.labels[:max_rows],
        )
    rt = Runtime(
        bundle,
        provider=provider,
        threads=threads,
        variant=variant,
        max_batch_size=batch_size,
        parallel=parallel,
        load_bundle_tasks=not from_file,
    )
    name = rt.load_task(task) if from_file else delta.metadata.task
    start = time.perf_counter()
    logits, truncated = predict_logits(rt, name, split, progress)
    seconds = time.perf_counter() - start
    meta = delta.metadata
    scored = score(logits, split.labels, meta.problem_type, meta.labels)
    return EvalReport(
        task=name,
        bundle=str(bundle),
        variant=variant,
        data=str(data),
        problem_type=meta.problem_type,
        labels=list(meta.labels),
        metric=str(meta.training.get("metric") or DEFAULT_METRIC[meta.problem_type]),
        metrics=scored["metrics"],
        rows=len(split),
        label_counts=scored["label_counts"],
        predicted_counts=scored["predicted_counts"],
        confusion=scored["confusion"],
        seconds=seconds,
        truncated=truncated,
        max_length=rt.tasks[name].max_length,
        dropped=dict(split.report.dropped) if split.report is not None else {},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        logits=logits,
    )


def read_eval_data(
    path: str | os.PathLike[str],
    delta: TaskDelta,
    columns: Columns | None = None,
    preset: str | None = None,
    quoting: str | None = None,
    drop_empty: bool = False,
) -> Split:
    """Read labelled rows for `delta`'s task with the training reader; labels must be the task's."""
    from bitfit_deploy.presets import get_preset

    try:
        import datasets  # noqa: F401  (the training reader's parser)
    except ImportError as exc:
        raise DataError(
            "reading evaluation data needs the datasets package (the training reader): "
            "pip install 'bitfit-deploy[train]' or pip install datasets."
        ) from exc
    meta = delta.metadata
    given = columns or Columns()
    preset_name = preset or meta.training.get("preset")
    label_map = None
    if preset_name:
        p = get_preset(preset_name)
        fallback = p.columns()
        label_map = p.label_map or None
    else:
        recorded = meta.training.get("columns") or {}
        fallback = Columns(recorded.get("text"), recorded.get("pair"), recorded.get("label"))
    chosen = Columns(
        given.text if given.text is not None else fallback.text,
        given.pair if given.pair is not None else fallback.pair,
        given.label if given.label is not None else fallback.label,
    )
    regression = meta.problem_type == "regression"
    data = load_task_data(
        path,
        None,
        chosen,
        meta.problem_type,
        label_names=None if regression else list(meta.labels),
        label_map=label_map,
        quoting=quoting,
        drop_empty=drop_empty,
    )
    return data.train


def predict_logits(
    runtime: Any, task: str, split: Split, progress: bool = True
) -> tuple[np.ndarray, int]:
    """Runtime predictions for every row as a `[rows, num_labels]` logit array; and the truncated count.

    The runtime returns probabilities; single-label rows come back as centred log-probabilities
    (the logits up to the constant softmax ignores), multi-label as log-odds, regression as is.
    """
    items: list[Any] = (
        list(split.texts)
        if split.pairs is None
        else list(zip(split.texts, split.pairs, strict=True))
    )
    info = runtime.tasks[task]
    rows: list[np.ndarray] = []
    truncated = 0
    bar = _bar(len(items), f"eval {task}", progress)
    for start in range(0, len(items), _CHUNK_ROWS):
        for pred in runtime.predict(task, items[start : start + _CHUNK_ROWS]):
            rows.append(_as_logits(pred, info.labels, info.problem_type))
            truncated += int(pred.truncated)
        if bar is not None:
            bar.update(min(_CHUNK_ROWS, len(items) - start))
    if bar is not None:
        bar.close()
    return np.stack(rows), truncated


def score(
    logits: np.ndarray, gold: list[Any], problem_type: str, labels: list[str]
) -> dict[str, Any]:
    """Metrics (`metrics.compute_metrics` plus macro F1), label counts and, for single-label, the confusion."""
    gold_arr = np.asarray(gold)
    metrics = compute_metrics(logits, gold_arr, problem_type)
    out: dict[str, Any] = {"label_counts": {}, "predicted_counts": {}, "confusion": None}
    if problem_type == "single_label":
        k = len(labels)
        pred, g = logits.argmax(-1), gold_arr.astype(int)
        metrics["macro_f1"] = macro_f1(pred, g, k)
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (g, pred), 1)
        out["confusion"] = confusion.tolist()
        out["label_counts"] = {n: int(c) for n, c in zip(labels, confusion.sum(1), strict=True)}
        out["predicted_counts"] = {n: int(c) for n, c in zip(labels, confusion.sum(0), strict=True)}
    elif problem_type == "multi_label":
        pred, g = (logits > 0).astype(int), gold_arr.astype(int)
        metrics["macro_f1"] = float(np.mean([f1(pred[:, j], g[:, j]) for j in range(len(labels))]))
        out["label_counts"] = {n: int(c) for n, c in zip(labels, g.sum(0), strict=True)}
        out["predicted_counts"] = {n: int(c) for n, c in zip(labels, pred.sum(0), strict=True)}
    elif undefined_correlation(logits, gold_arr):  # a correlation of constant values is no 0
        metrics.update({"pearson": None, "spearman": None})
    out["metrics"] = metrics
    return out


def compare_with_torch(
    report: EvalReport,
    bundle: str | os.PathLike[str],
    task: str,
    data: str | os.PathLike[str],
    columns: Columns | None = None,
    preset: str | None = None,
    model: str | None = None,
    batch_size: int = 32,
    max_rows: int | None = None,
    progress: bool = True,
    quoting: str | None = None,
    drop_empty: bool = False,
) -> dict[str, Any]:
    """Run the PyTorch reference (base + delta) on the same rows; the largest logit difference.

    Sets and returns `report.compare_torch`. Needs the train extra (torch, transformers).
    """
    import torch
    from transformers import AutoTokenizer

    from bitfit_deploy.modeling import apply_delta, base_fingerprint, load_encoder

    delta, _ = _find_delta(bundle, task)
    split = read_eval_data(data, delta, columns, preset, quoting=quoting, drop_empty=drop_empty)
    n = len(split) if max_rows is None else min(max_rows, len(split))
    manifest = read_manifest(bundle, verify=False)
    encoder, path = load_encoder(model)
    if base_fingerprint(encoder) != manifest.base_fingerprint:
        raise FingerprintMismatchError(
            f"the base model {path!r} is not the bundle's base ({manifest.base_fingerprint}); "
            "pass --model with the folder the bundle was exported from."
        )
    reference = apply_delta(encoder, delta)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    out = []
    bar = _bar(n, "torch", progress)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            end = min(n, start + batch_size)
            pairs = split.pairs[start:end] if split.pairs is not None else None
            enc = tokenizer(
                split.texts[start:end],
                pairs,
                truncation=True,
                max_length=report.max_length or manifest.max_length,  # cut where the runtime cut
                padding=True,
                return_tensors="pt",
            )
            inputs = {k: enc[k] for k in reference.text_inputs if k in enc}
            out.append(reference(**inputs)["logits"].float().numpy())
            if bar is not None:
                bar.update(end - start)
    if bar is not None:
        bar.close()
    torch_logits = np.concatenate(out).astype(np.float64)
    ours = np.asarray(report.logits, dtype=np.float64)[:n]
    if delta.metadata.problem_type == "single_label":  # softmax ignores a per-row constant
        torch_logits = torch_logits - torch_logits.mean(-1, keepdims=True)
    diff = np.abs(torch_logits - ours)
    agree = (
        float(np.mean(torch_logits.argmax(-1) == ours.argmax(-1)))
        if delta.metadata.problem_type == "single_label"
        else None
    )
    report.compare_torch = {
        "rows": n,
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "prediction_agreement": agree,
        "torch_metrics": score(
            torch_logits, split.labels[:n], delta.metadata.problem_type, delta.metadata.labels
        )["metrics"],
    }
    return report.compare_torch


def write_report(report: EvalReport, path: str | os.PathLike[str], force: bool = False) -> Path:
    """Write the report as JSON atomically; refuse an existing file unless `force`."""
    with atomic_file(path, force=force) as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return Path(path)


def _find_delta(bundle: str | os.PathLike[str], task: str) -> tuple[TaskDelta, bool]:
    """The task's delta: a file path given as `task`, else the bundle's shipped task of that name."""
    if str(task).endswith(".safetensors") or Path(task).is_file():
        return load_delta(task), True
    manifest = read_manifest(bundle, verify=False)
    shipped = []
    for rel in manifest.tasks:
        delta = load_delta(Path(bundle) / rel)
        if delta.metadata.task == task:
            return delta, False
        shipped.append(delta.metadata.task)
    raise TaskNotFoundError(
        f"task {task!r} is not shipped in bundle {str(bundle)!r} (it has: "
        f"{', '.join(shipped) or 'no tasks'}); pass --task with a task name from the bundle or "
        "the path of a delta file trained on its base."
    )


def _as_logits(pred: Any, labels: list[str], problem_type: str) -> np.ndarray:
    if problem_type == "regression":
        return np.array([pred.value], dtype=np.float64)
    p = np.array([pred.scores[n] for n in labels], dtype=np.float64)
    p = np.clip(p, 1e-300, 1.0)
    if problem_type == "multi_label":
        return np.log(p) - np.log(np.clip(1.0 - p, 1e-300, 1.0))
    logp = np.log(p)
    return logp - logp.mean()


def _bar(total: int, desc: str, progress: bool) -> Any:
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with the train extra and with huggingface_hub
        return None
    return tqdm(total=total, desc=desc, unit="row", leave=False)
