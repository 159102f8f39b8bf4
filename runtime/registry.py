"""The task table: loaded tasks with their precomputed bias rows, swapped copy-on-write under a lock.

Predictions read one immutable snapshot for their whole call, so loads and unloads by other
threads never change a run under way; a load that fails leaves the table as it was.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from bitfit_deploy.delta import TaskDelta
from bitfit_deploy.errors import TaskExistsError, TaskNotFoundError, listing, shown
from bitfit_deploy.manifest import BiasInput
from bitfit_deploy.runtime.results import TaskInfo


@dataclass(frozen=True)
class BiasLayout:
    """Where each bias input lives in a task's flat row: `[offset, offset + dim)`, in manifest order."""

    names: tuple[str, ...]
    offsets: tuple[int, ...]
    dims: tuple[int, ...]

    @classmethod
    def from_inputs(cls, inputs: list[BiasInput]) -> BiasLayout:
        offsets, total = [], 0
        for b in inputs:
            offsets.append(total)
            total += b.dim
        return cls(tuple(b.name for b in inputs), tuple(offsets), tuple(b.dim for b in inputs))

    def flatten(self, vectors: Mapping[str, np.ndarray]) -> np.ndarray:
        """One float32 row holding every bias input's vector, in layout order."""
        return np.concatenate([np.asarray(vectors[n], dtype=np.float32) for n in self.names])

    def slices(self) -> list[tuple[str, slice]]:
        return [
            (n, slice(o, o + d))
            for n, o, d in zip(self.names, self.offsets, self.dims, strict=True)
        ]


@dataclass(frozen=True)
class LoadedTask:
    """A task ready to run: absolute bias row (base + delta), head, and its public description."""

    info: TaskInfo
    row: np.ndarray
    head_weight: np.ndarray
    head_bias: np.ndarray


def prepare_task(
    delta: TaskDelta, name: str, base_row: np.ndarray, layout: BiasLayout, max_length: int = 0
) -> LoadedTask:
    """Precompute a task's absolute bias row once, so a run only gathers rows.

    `max_length` is where its inputs are cut (the delta's, capped by the bundle's; 0: the bundle's).
    """
    row = base_row.copy()
    for bias, sl in layout.slices():
        if bias in delta.biases:
            row[sl] += delta.biases[bias]
    meta = delta.metadata
    info = TaskInfo(
        name=name,
        labels=list(meta.labels),
        problem_type=meta.problem_type,
        metrics=dict(meta.metrics),
        pooling=meta.pooling,
        num_labels=delta.num_labels,
        inputs=meta.inputs,
        max_length=max_length,
    )
    row.setflags(write=False)
    return LoadedTask(
        info, row, np.ascontiguousarray(delta.head_weight), np.ascontiguousarray(delta.head_bias)
    )


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of the table: tasks by name, their slots, and device-side tables if any."""

    tasks: Mapping[str, LoadedTask] = field(default_factory=lambda: MappingProxyType({}))
    slots: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    device: Any = None

    def get(self, name: str) -> LoadedTask:
        """The task `name`, or TaskNotFoundError listing the loaded ones."""
        try:
            if isinstance(name, str):
                return self.tasks[name]
            raise KeyError(name)
        except KeyError:
            loaded = listing(sorted(self.tasks), 20) or "none"  # thousands, maybe
            raise TaskNotFoundError(
                f"task {shown(name)} is not loaded (loaded: {loaded}); load it with load_task or "
                "PUT /v1/tasks/NAME first."
            ) from None


class TaskRegistry:
    """Copy-on-write task table; `build_device` (if given) makes the device tables of each new version."""

    def __init__(self, build_device: Callable[[list[LoadedTask]], Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._build_device = build_device
        self._snapshot = self._make({})

    def snapshot(self) -> Snapshot:
        """The current table; safe to keep using while others change the registry."""
        return self._snapshot

    def add(self, task: LoadedTask, replace: bool = False) -> None:
        """Add `task`; refuse an existing name unless `replace`."""
        with self._lock:
            tasks = dict(self._snapshot.tasks)
            name = task.info.name
            if name in tasks and not replace:
                raise TaskExistsError(
                    f"a task named {name!r} is loaded already; pass replace=True to swap it, "
                    "or load it under another name."
                )
            tasks[name] = task
            self._snapshot = self._make(tasks)

    def update_infos(self, updates: Sequence[tuple[LoadedTask, TaskInfo]]) -> None:
        """Give tasks new descriptions (same rows and heads); skip any unloaded or replaced since."""
        with self._lock:
            tasks = dict(self._snapshot.tasks)
            for task, info in updates:
                if tasks.get(info.name) is task:
                    tasks[info.name] = dataclasses.replace(task, info=info)
            # same tasks in the same order: the slots and device tables stay valid
            self._snapshot = Snapshot(
                MappingProxyType(tasks), self._snapshot.slots, self._snapshot.device
            )

    def remove(self, name: str) -> None:
        """Drop task `name`; TaskNotFoundError if it is not loaded."""
        with self._lock:
            self._snapshot.get(name)
            tasks = {k: v for k, v in self._snapshot.tasks.items() if k != name}
            self._snapshot = self._make(tasks)

    def _make(self, tasks: dict[str, LoadedTask]) -> Snapshot:
        ordered = list(tasks.values())
        device = self._build_device(ordered) if self._build_device and ordered else None
        slots = {t.info.name: i for i, t in enumerate(ordered)}
        return Snapshot(MappingProxyType(dict(tasks)), MappingProxyType(slots), device)
