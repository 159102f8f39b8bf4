"""Quiet training output: one progress bar over the steps and one line per epoch with its metrics.

Replaces the Trainer's own ProgressCallback/PrinterCallback, which print every log as a raw dict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback


def epoch_line(epoch: float, train_loss: float | None, metrics: dict[str, float]) -> str:
    """`epoch 1: train loss 0.4123, eval loss 0.3512, accuracy 0.8410, f1 0.8392`."""
    parts = [] if train_loss is None else [f"train loss {train_loss:.4f}"]
    for key, value in metrics.items():
        name = key.removeprefix("eval_")
        if name in ("epoch",) or name.endswith(("runtime", "per_second")):
            continue
        parts.append(f"{'eval loss' if name == 'loss' else name} {float(value):.4f}")
    return f"epoch {epoch:g}: " + (", ".join(parts) or "done")


class EpochProgress(TrainerCallback):
    """A tqdm bar over the optimizer steps; a line per epoch (train loss, eval metrics) above it."""

    def __init__(self, write: Callable[[str], Any] | None = None) -> None:
        self.bar: Any = None
        self.train_loss: float | None = None
        self._write = write

    def _emit(self, line: str) -> None:
        if self._write is not None:
            self._write(line)
        elif self.bar is not None:
            self.bar.write(line)
        else:
            print(line)

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, desc="train", unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        self.train_loss = float(logs["loss"])
        if args.eval_strategy == "no":
            self._emit(epoch_line(state.epoch or 0.0, self.train_loss, {}))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
        if state.is_world_process_zero and metrics is not None:
            self._emit(epoch_line(state.epoch or 0.0, self.train_loss, metrics))

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.bar is not None:
            self.bar.close()
            self.bar = None
