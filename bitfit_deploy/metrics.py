"""Task metrics on numpy arrays: accuracy, F1, Matthews correlation, Pearson and Spearman."""

from __future__ import annotations

import numpy as np

DEFAULT_METRIC = {"single_label": "accuracy", "multi_label": "f1", "regression": "pearson"}
"""The metric that picks the best epoch when no preset names one."""


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    """Share of exact matches (rows must match entirely for multi-label)."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    if pred.ndim == 2:
        return float(np.mean(np.all(pred == gold, axis=1)))
    return float(np.mean(pred == gold))


def f1(pred: np.ndarray, gold: np.ndarray, positive: int = 1) -> float:
    """Binary F1 of class `positive`; micro F1 over label slots for multi-hot arrays."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    if pred.ndim == 2:
        p, g = pred.astype(bool), gold.astype(bool)
    else:
        p, g = pred == positive, gold == positive
    tp = float(np.sum(p & g))
    denom = float(np.sum(p) + np.sum(g))
    return 2 * tp / denom if denom else 0.0


def macro_f1(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of the per-class F1 scores."""
    return float(np.mean([f1(pred, gold, positive=k) for k in range(num_labels)]))


def matthews(pred: np.ndarray, gold: np.ndarray) -> float:
    """Matthews correlation coefficient (multi-class form); 0 when undefined."""
    pred, gold = np.asarray(pred).astype(int), np.asarray(gold).astype(int)
    k = int(max(pred.max(initial=0), gold.max(initial=0))) + 1
    conf = np.zeros((k, k), dtype=np.float64)
    np.add.at(conf, (gold, pred), 1)
    t, p = conf.sum(1), conf.sum(0)
    c, s = np.trace(conf), conf.sum()
    denom = np.sqrt((s**2 - p @ p) * (s**2 - t @ t))
    return float((c * s - t @ p) / denom) if denom else 0.0


def undefined_correlation(pred: np.ndarray, gold: np.ndarray) -> bool:
    """True when a correlation of `pred` and `gold` is undefined: under 2 rows, or a constant side."""
    pred, gold = np.asarray(pred).ravel(), np.asarray(gold).ravel()
    return len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(gold) == 0


def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
    """Pearson correlation; 0 when undefined (`undefined_correlation`), so that training can
    still rank epochs; eval reports it as undefined. numpy only (the runtime's eval uses it)."""
    pred, gold = (
        np.asarray(pred, dtype=np.float64).ravel(),
        np.asarray(gold, dtype=np.float64).ravel(),
    )
    if undefined_correlation(pred, gold):
        return 0.0
    a, b = pred - pred.mean(), gold - gold.mean()
    return float(np.clip((a @ b) / np.sqrt((a @ a) * (b @ b)), -1.0, 1.0))


def spearman(pred: np.ndarray, gold: np.ndarray) -> float:
    """Spearman rank correlation (ties get their average rank); 0 when undefined, as `pearson`."""
    pred, gold = (
        np.asarray(pred, dtype=np.float64).ravel(),
        np.asarray(gold, dtype=np.float64).ravel(),
    )
    if undefined_correlation(pred, gold):
        return 0.0
    return pearson(_ranks(pred), _ranks(gold))


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties averaged (as scipy.stats.rankdata's default)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def compute_metrics(logits: np.ndarray, labels: np.ndarray, problem_type: str) -> dict[str, float]:
    """All metrics that fit `problem_type`, from raw logits and encoded labels."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if problem_type == "regression":
        pred = logits.reshape(-1)
        return {
            "pearson": pearson(pred, labels),
            "spearman": spearman(pred, labels),
            "mse": float(np.mean((pred - labels.astype(np.float64)) ** 2)),
        }
    if problem_type == "multi_label":
        pred = (logits > 0).astype(int)
        return {"f1": f1(pred, labels.astype(int)), "accuracy": accuracy(pred, labels.astype(int))}
    pred = logits.argmax(-1)
    gold = labels.astype(int)
    out = {"accuracy": accuracy(pred, gold), "matthews": matthews(pred, gold)}
    num_labels = logits.shape[-1]
    out["f1"] = f1(pred, gold) if num_labels == 2 else macro_f1(pred, gold, num_labels)
    return out
