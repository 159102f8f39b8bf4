"""The head-only method (a linear probe): pool the frozen encoder once, then train the head alone.

With every encoder weight frozen the pooled features never change, so `train --method head`
computes them once (encoder in eval mode: no dropout, as a linear probe is usually trained)
and the Trainer then runs over the features with this module's `ProbeModel`, whose head is the
TaskModel's own `nn.Linear`. Epochs cost almost nothing after the one encoding pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bitfit_deploy.modeling import TaskModel, pool, task_loss


class ProbeModel(nn.Module):
    """The task head over precomputed pooled features; shares the TaskModel's head parameters."""

    def __init__(self, head: nn.Linear, problem_type: str) -> None:
        super().__init__()
        self.head = head
        self.problem_type = problem_type

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        logits = self.head(features)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = task_loss(logits, labels, self.problem_type)
        return out


class _Features(torch.utils.data.Dataset):
    def __init__(self, features: torch.Tensor, labels: list[Any]) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"features": self.features[i], "labels": self.labels[i]}


def pooled_features(
    model: TaskModel,
    examples: torch.utils.data.Dataset,
    tokenizer: Any,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "encode",
) -> _Features:
    """Pool every example once with the frozen encoder (eval mode); a dataset of features + labels."""
    from tqdm.auto import tqdm
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    n = len(examples)
    rows = [examples[i] for i in range(n)]
    order = sorted(range(n), key=lambda i: len(rows[i]["input_ids"]))  # less padding per batch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    out = torch.empty(n, model.head.in_features)
    starts = range(0, n, batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
            idx = order[start : start + batch_size]
            batch = collate([{k: v for k, v in rows[i].items() if k != "labels"} for i in idx])
            inputs = {k: batch[k].to(device) for k in model.text_inputs if k in batch}
            hidden = model.encoder(**inputs).last_hidden_state
            pooled = pool(model.encoder, hidden, inputs["attention_mask"], model.pooling)
            out[idx] = pooled.float().cpu()
    return _Features(out, [r["labels"] for r in rows])
