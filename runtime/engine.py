"""Running one batch: gather each row's task tensors, feed them beside the text, return logits.

`HostEngine` gathers rows in numpy and feeds arrays. `BoundEngine` keeps every task's tensors
in per-bias tables on the session's device, gathers a batch's rows there with a tiny Gather
graph, and binds the results to the main session with I/O binding, so nothing task-sized
crosses to the device per request. It runs on "cuda" and, for tests, on "cpu".
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from bitfit_deploy.contract import HEAD_BIAS, HEAD_WEIGHT, LOGITS
from bitfit_deploy.errors import BundleError
from bitfit_deploy.runtime._gather_graph import ROWS, TABLE_PREFIX, gather_graph
from bitfit_deploy.runtime.parallel import RowSlices
from bitfit_deploy.runtime.providers import create_session
from bitfit_deploy.runtime.registry import BiasLayout, LoadedTask, Snapshot


def _padded_heads(tasks: Sequence[LoadedTask], hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """Heads stacked to `[n, max_labels, hidden]` and `[n, max_labels]`, zero-padded."""
    width = max(t.info.num_labels for t in tasks)
    weight = np.zeros((len(tasks), width, hidden), dtype=np.float32)
    bias = np.zeros((len(tasks), width), dtype=np.float32)
    for i, t in enumerate(tasks):
        weight[i, : t.info.num_labels] = t.head_weight
        bias[i, : t.info.num_labels] = t.head_bias
    return weight, bias


def check_graph_inputs(
    session: ort.InferenceSession,
    text_inputs: Sequence[str],
    layout: BiasLayout,
    hidden: int,
    source: str,
) -> None:
    """BundleError unless the graph takes exactly the manifest's inputs, at the manifest's widths.

    The manifest holds the checksums, so nothing checks it but this: an edited or damaged one
    would otherwise fail inside ONNX Runtime at the first prediction.
    """
    expected = {name: None for name in text_inputs}
    expected |= dict(zip(layout.names, layout.dims, strict=True))
    expected |= {HEAD_WEIGHT: hidden, HEAD_BIAS: None}
    found = {i.name: i.shape[-1] for i in session.get_inputs()}
    wrong = [
        f"{name!r} of width {expected[name]} (the graph's: {found[name]})"
        for name in expected.keys() & found.keys()
        if expected[name] is not None
        and isinstance(found[name], int)
        and found[name] != expected[name]
    ]
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if missing or extra or wrong:
        parts = [
            *([f"inputs the graph lacks: {', '.join(missing[:3])}"] if missing else []),
            *([f"graph inputs it does not list: {', '.join(extra[:3])}"] if extra else []),
            *([f"inputs {', '.join(wrong[:3])}"] if wrong else []),
        ]
        raise BundleError(
            f"{source} does not describe its graph ({'; '.join(parts)}); the manifest was edited "
            "or damaged. Export the bundle again."
        )


class RowStack:
    """Stacks a batch's bias rows into reused buffers: a fresh multi-MiB array per batch costs its
    page faults (2.2 against 0.8 ms for 32 MiniLM rows, one-off micro-benchmark).

    At most `keep` buffers (the largest) are kept between batches, whatever the number of calling
    threads; a caller finding none free and large enough gets a new one, and a batch over
    `max_bytes` an array of its own.
    """

    def __init__(self, keep: int = 2, max_bytes: int = 16 << 20) -> None:
        self.keep = keep
        self.max_bytes = max_bytes  # 160 MiniLM rows
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    @contextmanager
    def stacked(self, rows: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
        """`[len(rows), width]` float32 holding `rows`, valid until the block ends."""
        n, width = len(rows), len(rows[0])
        if n * width * 4 > self.max_bytes:
            yield np.stack(rows)
            return
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.shape[0] >= n and b.shape[1] == width]
            buffer = self._free.pop(fits[0]) if fits else None
        if buffer is None:
            buffer = np.empty((n, width), dtype=np.float32)
        try:
            yield np.stack(rows, out=buffer[:n])
        finally:
            with self._lock:  # keep the largest: a few single rows must not crowd out batches
                self._free.append(buffer)
                self._free.sort(key=len, reverse=True)
                del self._free[self.keep :]


class HostEngine:
    """Gathers rows' bias vectors and heads in numpy and runs the session on plain arrays.

    With `slices` (parallel="rows"), a batch runs as slices of rows at once, one core each.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        layout: BiasLayout,
        hidden: int,
        slices: RowSlices | None = None,
    ) -> None:
        self.session = session
        self.layout = layout
        self.hidden = hidden
        self.slices = slices or RowSlices(1)
        self.row_stack = RowStack()

    def build_device(self, tasks: list[LoadedTask]) -> None:
        return None

    def run(
        self, snapshot: Snapshot, tasks: Sequence[LoadedTask], text: dict[str, np.ndarray]
    ) -> np.ndarray:
        """Logits `[batch, max_labels]` for rows whose tasks are `tasks` (one per row)."""
        return self.slices.run(self._run_feeds, self.feeds(tasks, text))

    def _run_feeds(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([LOGITS], feeds)[0]

    def feeds(
        self, tasks: Sequence[LoadedTask], text: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The graph's inputs for rows whose tasks are `tasks`: text, bias rows, padded heads.

        The batch's rows are stacked once (into a reused buffer, see `RowStack`), then each
        input's columns copied out contiguous: two numpy calls per input, where filling each
        input row by row takes one per row and input. The feeds never alias the buffer.
        """
        feeds = dict(text)
        with self.row_stack.stacked([task.row for task in tasks]) as rows:
            for name, sl in self.layout.slices():
                feeds[name] = rows[:, sl].copy()  # a copy even where the slice is contiguous
        feeds[HEAD_WEIGHT], feeds[HEAD_BIAS] = _padded_heads(tasks, self.hidden)
        return feeds


@dataclass(frozen=True)
class DeviceTables:
    """Per-bias `[slots, dim]` tables and the padded head tables, as OrtValues on the device."""

    values: dict[str, ort.OrtValue]


class BoundEngine:
    """Keeps task tables on `device` and gathers there; I/O binding between the two sessions."""

    def __init__(
        self,
        session: ort.InferenceSession,
        layout: BiasLayout,
        hidden: int,
        provider: str,
        threads: int | None,
        device: str,
        device_id: int = 0,
    ) -> None:
        self.session = session
        self.layout = layout
        self.hidden = hidden
        self.device = device
        self.device_id = device_id
        tables = [(n, [d]) for n, d in zip(layout.names, layout.dims, strict=True)]
        tables += [(HEAD_WEIGHT, ["labels", hidden]), (HEAD_BIAS, ["labels"])]
        self.outputs = [n for n, _ in tables]
        self.gather = create_session(gather_graph(tables), provider, threads)

    def build_device(self, tasks: list[LoadedTask]) -> DeviceTables:
        """Upload the tables of a new registry version (rows in slot order)."""
        rows = np.stack([t.row for t in tasks])
        arrays = {name: np.ascontiguousarray(rows[:, sl]) for name, sl in self.layout.slices()}
        arrays[HEAD_WEIGHT], arrays[HEAD_BIAS] = _padded_heads(tasks, self.hidden)
        return DeviceTables(
            {
                TABLE_PREFIX + name: ort.OrtValue.ortvalue_from_numpy(
                    array, self.device, self.device_id
                )
                for name, array in arrays.items()
            }
        )

    def run(
        self, snapshot: Snapshot, tasks: Sequence[LoadedTask], text: dict[str, np.ndarray]
    ) -> np.ndarray:
        """Logits `[batch, labels]`: gather on the device, then run the main graph on the bound rows."""
        tables: DeviceTables = snapshot.device
        slots = np.array([snapshot.slots[t.info.name] for t in tasks], dtype=np.int64)
        gather = self.gather.io_binding()
        gather.bind_cpu_input(ROWS, slots)
        for name, value in tables.values.items():
            gather.bind_ortvalue_input(name, value)
        for name in self.outputs:
            gather.bind_output(name, self.device, self.device_id)
        self.gather.run_with_iobinding(gather)
        gathered = gather.get_outputs()
        main = self.session.io_binding()
        for name, array in text.items():
            main.bind_cpu_input(name, array)
        for name, value in zip(self.outputs, gathered, strict=True):
            main.bind_ortvalue_input(name, value)
        main.bind_output(LOGITS, "cpu")
        self.session.run_with_iobinding(main)
        return main.copy_outputs_to_cpu()[0]
