"""Grouping rows into runs: rows of similar length together, so padding wastes little compute."""

from __future__ import annotations

from collections.abc import Sequence


def plan_runs(lengths: Sequence[int], max_batch_size: int) -> list[list[int]]:
    """Row indices grouped into runs of at most `max_batch_size`, each of rows of similar length.

    Rows are sorted by length (stable, so equal lengths keep their order) and cut into
    consecutive runs; the caller puts results back in input order.

    >>> plan_runs([5, 30, 6, 29], 2)
    [[0, 2], [3, 1]]
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + max_batch_size] for i in range(0, len(order), max_batch_size)]
