"""Task metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from bitfit_deploy.metrics import (
    accuracy,
    compute_metrics,
    f1,
    macro_f1,
    matthews,
    pearson,
    spearman,
)


def test_binary_metrics_by_hand():
    pred, gold = np.array([0, 1, 1, 0, 1]), np.array([0, 1, 0, 0, 1])
    assert accuracy(pred, gold) == pytest.approx(0.8)
    assert f1(pred, gold) == pytest.approx(0.8)  # tp 2, fp 1, fn 0
    assert matthews(pred, gold) == pytest.approx(4 / 6)  # (tp*tn - fp*fn) / sqrt(3*2*2*3)
    assert (
        matthews(np.ones(4), np.array([0, 1, 0, 1])) == 0.0
    )  # constant prediction: undefined -> 0
    assert macro_f1(pred, gold, 2) == pytest.approx((0.8 + 0.8) / 2)


def test_correlations_and_degenerate_input():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert pearson(np.ones(4), x) == 0.0 and spearman(x[:1], x[:1]) == 0.0


def test_compute_metrics_by_problem_type():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    single = compute_metrics(logits, np.array([0, 1, 1]), "single_label")
    assert single["accuracy"] == pytest.approx(2 / 3) and set(single) == {
        "accuracy",
        "matthews",
        "f1",
    }
    multi = compute_metrics(
        np.array([[1.0, -1.0], [1.0, 1.0]]), np.array([[1, 0], [1, 0]]), "multi_label"
    )
    assert multi["accuracy"] == pytest.approx(0.5) and multi["f1"] == pytest.approx(2 * 2 / (3 + 2))
    reg = compute_metrics(np.array([[1.0], [2.0], [3.0]]), np.array([1.0, 2.0, 4.0]), "regression")
    assert reg["spearman"] == pytest.approx(1.0) and reg["mse"] == pytest.approx(1 / 3)
