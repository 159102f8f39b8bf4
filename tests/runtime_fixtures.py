"""Helpers for the runtime tests: a tiny exported bundle and synthetic task deltas."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bitfit_deploy.delta import DeltaMetadata, TaskDelta, save_delta
from bitfit_deploy.manifest import Manifest

SENTENCES = [
    "it 's a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
    "the acting , costumes , music , cinematography and sound are all astounding given the production 's austere locales .",
    "a gorgeous , witty , seductive movie .",
    "bad",
    "the story is also as unoriginal as they come , already having been recycled more times than i 'd care to count .",
]
PAIRS = [
    ("A man is playing a guitar.", "A person plays an instrument."),
    ("The cat sat on the mat.", "Stocks fell sharply on Monday."),
]
LONG_TEXT = " ".join(["the film was long but rewarding and the cast did a fine job"] * 30)

TASK_SPECS = {
    "sentiment": ("single_label", ["negative", "positive"]),
    "topics": ("multi_label", ["art", "sport", "money"]),
    "similarity": ("regression", []),
    "four": ("single_label", ["a", "b", "c", "d"]),
}


def synthetic_delta(
    manifest: Manifest,
    name: str,
    problem_type: str = "single_label",
    labels: list[str] | None = None,
    seed: int = 0,
    subset: int | None = None,
    fingerprint: str | None = None,
) -> TaskDelta:
    """A delta with random biases (the first `subset` inputs, or all) and a random head."""
    labels = ["negative", "positive"] if labels is None else labels
    rng = np.random.default_rng(seed)
    inputs = manifest.bias_inputs[:subset] if subset else manifest.bias_inputs
    biases = {b.name: rng.normal(0, 0.2, b.dim).astype(np.float32) for b in inputs}
    n = 1 if problem_type == "regression" else len(labels)
    meta = DeltaMetadata(
        task=name,
        base_fingerprint=fingerprint or manifest.base_fingerprint,
        problem_type=problem_type,
        labels=list(labels),
        pooling=manifest.pooling,
    )
    head_w = rng.normal(0, 1.0, (n, manifest.hidden_size)).astype(np.float32)
    head_b = rng.normal(0, 0.1, n).astype(np.float32)
    return TaskDelta(meta, biases, head_w, head_b)


def write_task_deltas(manifest: Manifest, folder: Path) -> dict[str, Path]:
    """Save one delta per TASK_SPECS entry into `folder`; return name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for seed, (name, (problem_type, labels)) in enumerate(TASK_SPECS.items()):
        subset = 5 if name == "four" else None
        delta = synthetic_delta(manifest, name, problem_type, labels, seed=seed + 1, subset=subset)
        paths[name] = save_delta(delta, folder / f"{name}.safetensors")
    return paths


def run_in_fork(child: Callable[[], bool], timeout: float = 30.0) -> str:
    """Run `child()` in a forked process: "ok", "failed" (False or raised) or "hung" (killed)."""
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = bool(child())
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "ok" if os.waitstatus_to_exitcode(status) == 0 else "failed"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"
