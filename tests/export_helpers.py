"""Test helpers for the exporter: random task deltas, feeding the per-row graph, the PyTorch reference.

Deliberately independent of `runtime/` (written separately): tests of the export must not
depend on the code that consumes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bitfit_deploy.contract import HEAD_BIAS, HEAD_WEIGHT, graph_bias_names
from bitfit_deploy.delta import DeltaMetadata, TaskDelta, save_delta
from bitfit_deploy.modeling import apply_delta, base_fingerprint

TEXTS = [
    "the movie was good",
    "a much longer sentence, with quite a few more tokens than the others in this batch",
    "x",
    "this film was dull and the plot made little sense",
    "ok",
    "our trip was wonderful",
    "the food was terrible, the service worse, and the bill surprisingly large",
]


def random_delta(
    encoder, task: str, num_labels: int, pooling: str = "mean", seed: int = 0, scale: float = 0.1
) -> TaskDelta:
    """A synthetic task: random deltas for every graph bias and a random head of `num_labels`."""
    rng = np.random.default_rng(seed)
    params = {n: p.detach().numpy() for n, p in encoder.named_parameters()}
    names = graph_bias_names(params, pooling)
    hidden = int(params[names[0]].shape[0])
    meta = DeltaMetadata(
        task=task,
        base_fingerprint=base_fingerprint(encoder),
        problem_type="single_label",
        labels=[f"l{i}" for i in range(num_labels)],
        pooling=pooling,
        architecture=encoder.config.model_type,
    )
    biases = {n: (scale * rng.standard_normal(params[n].shape)).astype(np.float32) for n in names}
    head_w = (rng.standard_normal((num_labels, hidden)) / np.sqrt(hidden)).astype(np.float32)
    head_b = rng.standard_normal(num_labels).astype(np.float32)
    return TaskDelta(meta, biases, head_w, head_b)


def write_deltas(
    encoder, folder: Path, pooling: str = "mean", labels=(2, 3, 5)
) -> list[tuple[Path, TaskDelta]]:
    """Save one random delta per entry of `labels` as `folder/task{i}.safetensors`."""
    out = []
    for i, k in enumerate(labels):
        delta = random_delta(encoder, f"task{i}", k, pooling, seed=100 + i)
        path = save_delta(delta, folder / f"task{i}.safetensors", force=True)
        out.append((path, delta))
    return out


def tokenize(
    model_dir: str | Path, texts: list[str], text_inputs: list[str], pad_to: int | None = None
) -> dict[str, np.ndarray]:
    """int64 text inputs padded to the longest text, or to `pad_to` (extra padding on every row)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    kwargs = {"padding": "max_length", "max_length": pad_to} if pad_to else {"padding": True}
    enc = tok(texts, truncation=True, return_tensors="np", **kwargs)
    out = {n: enc[n].astype(np.int64) for n in text_inputs if n in enc}
    if "token_type_ids" in text_inputs and "token_type_ids" not in out:
        out["token_type_ids"] = np.zeros_like(out["input_ids"])
    return out


def graph_feeds(
    text: dict[str, np.ndarray], base: dict[str, np.ndarray], row_deltas: list[TaskDelta]
) -> dict[str, np.ndarray]:
    """Feeds for the per-row graph: row i uses `row_deltas[i]`; heads padded to the widest task."""
    width = max(d.num_labels for d in row_deltas)
    feeds = dict(text)
    for name, vector in base.items():
        feeds[name] = np.stack([vector + d.biases.get(name, 0.0) for d in row_deltas]).astype(
            np.float32
        )
    hidden = row_deltas[0].head_weight.shape[1]
    weight = np.zeros((len(row_deltas), width, hidden), np.float32)
    bias = np.zeros((len(row_deltas), width), np.float32)
    for i, d in enumerate(row_deltas):
        weight[i, : d.num_labels] = d.head_weight
        bias[i, : d.num_labels] = d.head_bias
    feeds[HEAD_WEIGHT], feeds[HEAD_BIAS] = weight, bias
    return feeds


def session(path: str | Path) -> ort.InferenceSession:
    """A CPU session on one thread (deterministic, light on a shared machine)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def reference(encoder, delta: TaskDelta, text: dict[str, np.ndarray]) -> np.ndarray:
    """Logits of modeling.apply_delta (the PyTorch reference) for `text`."""
    model = apply_delta(encoder, delta)
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in text.items()})["logits"].numpy()
