"""Static int8: check how much of a task's activations falls outside the ranges calibrated at export.

A static int8 graph clips each quantized activation at the value calibrated on the base and the
exported tasks. Each task loaded into a static int8 runtime runs the bundle's range probe (the int8
graph plus, per quantized tensor, the share of values beyond its clip: `INT8_PROBE_FILE`) on a few
calibration texts. The worst tensor's share goes into `TaskInfo.int8_clipped`, with a warning above
`CLIPPED_WARNING`.

The check never delays serving: a background thread runs it after the task is loaded, for up to
`CHECK_BATCH` waiting tasks at once (rows of one run are tasks, all on the same text, so nothing
is padded); `int8_clipped` is None until it is done (`Runtime.wait_for_int8_checks` waits). The
probe session is open only while checks wait (about 30 MiB for MiniLM, 0.1 s to open);
`Runtime(..., check_int8_ranges=False)` skips all of it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from bitfit_deploy.contract import ATTENTION_MASK
from bitfit_deploy.integrity import verify_files
from bitfit_deploy.manifest import PROBE_FILE_KEYS, Manifest
from bitfit_deploy.runtime.engine import HostEngine
from bitfit_deploy.runtime.providers import create_session
from bitfit_deploy.runtime.registry import BiasLayout, LoadedTask

CLIPPED_WARNING = 0.001
"""Warn above 0.1% of a tensor's values clipped: a prompt to run `eval --variant int8`, not a
verdict. Measured (`benchmarks/int8_checks.py`) on all-MiniLM-L6-v2, calibrated on the shipped texts without these tasks: 6 of 8
real BitFit tasks clip 0.01-0.04% and score within 0.5 points of fp32; CoLA (0.13%) and RTE (0.61%)
clip more and still score as fp32 (false alarms); an MRPC delta with its biases tripled clips 0.12%
and its int8 answers agree with fp32 on only 82% of MRPC dev pairs (98% once exported with the
bundle, which calibrates on it). Silence is no guarantee either: the probe runs generic texts, not
the task's own."""

CHECK_BATCH = 32
"""Tasks checked together in one probe run per calibration text."""

log = logging.getLogger("bitfit_deploy.runtime")

CheckResult = tuple[LoadedTask, float, str]
"""(the task as it was checked, share clipped in its worst tensor, that tensor)."""


class RangeProbe:
    """Runs the bundle's range probe for one task at a time (thread-safe, opened lazily)."""

    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        spec: dict,
        layout: BiasLayout,
        threads: int | None,
        use_markers: bool = True,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.outputs = list(spec["clip"])
        self._files = [spec[key] for key in PROBE_FILE_KEYS]
        self._layout = layout
        self._threads = threads
        self._use_markers = use_markers
        self._engine: HostEngine | None = None
        self._rows: list[dict[str, np.ndarray]] = []
        self._lock = threading.Lock()

    @classmethod
    def for_variant(
        cls,
        bundle_dir: Path,
        manifest: Manifest,
        variant: str,
        layout: BiasLayout,
        threads: int | None,
        use_markers: bool = True,
    ) -> RangeProbe | None:
        """The probe of `variant` if it is static int8 with a probe (bundles before it: None)."""
        spec = manifest.quantization.get(variant) or {}
        if spec.get("activations") != "static" or not spec.get("probe") or not spec.get("clip"):
            return None
        return cls(bundle_dir, manifest, spec, layout, threads, use_markers)

    def clipped(self, tasks: Sequence[LoadedTask]) -> list[tuple[float, str]]:
        """Per task: the share of values clipped in its worst tensor, and that tensor's output."""
        share = np.zeros((len(tasks), len(self.outputs)))
        with self._lock:
            engine = self._open()
            for text in self._rows:  # one text for every row: no padding, which would count
                tiled = {k: np.repeat(v, len(tasks), axis=0) for k, v in text.items()}
                values = engine.session.run(self.outputs, engine.feeds(tasks, tiled))
                share += np.stack(values, axis=1) / len(self._rows)
        worst = share.argmax(axis=1)
        return [(float(share[i, w]), self.outputs[w]) for i, w in enumerate(worst)]

    def after_fork(self) -> None:
        """In a forked child: a lock of its own (a check under way at the fork held the parent's)."""
        self._lock = threading.Lock()

    def release(self) -> None:
        """Drop the probe session (about 30 MiB for MiniLM); the next check opens it again."""
        with self._lock:
            self._engine = None

    def _open(self) -> HostEngine:
        if self._engine is None:
            verify_files(self.bundle_dir, self.manifest.files, self._files, self._use_markers)
            probe, inputs = (self.bundle_dir / f for f in self._files)
            arrays = load_file(str(inputs))
            lengths = arrays[ATTENTION_MASK].sum(axis=1)
            self._rows = [
                {k: v[i : i + 1, : int(n)] for k, v in arrays.items()}
                for i, n in enumerate(lengths)
            ]
            session = create_session(probe, "cpu", self._threads, spin_wait=False)
            self._engine = HostEngine(session, self._layout, self.manifest.hidden_size)
        return self._engine


class RangeChecker:
    """Checks submitted tasks in a background thread, in batches; reports through `on_results`.

    The thread runs only while tasks wait, so an idle runtime holds no thread. A failed check
    (a probe file that fails its checksum, say) is logged and leaves `int8_clipped` None. At
    interpreter exit, waiting checks are dropped and the one under way is let finish: a thread
    still inside ONNX Runtime while the process tears down aborts it. A forked child starts over
    with a lock and thread of its own (the parent's do not survive the fork); the tasks still
    waiting are checked there too, the one the parent was checking is not.
    """

    def __init__(self, probe: RangeProbe, on_results: Callable[[list[CheckResult]], None]) -> None:
        self._probe = probe
        self._on_results = on_results
        self._pending: list[LoadedTask] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._pid = os.getpid()
        _LIVE.add(self)

    def submit(self, task: LoadedTask) -> None:
        """Queue `task` for a check."""
        self._after_fork()
        with self._cond:
            if self._closed:
                return
            self._pending.append(task)
            self._start_worker()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted task is checked; False if `timeout` seconds pass first."""
        self._after_fork()
        with self._cond:
            return self._cond.wait_for(lambda: self._thread is None, timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Drop waiting checks, let the one under way finish, and stop taking new ones."""
        self._after_fork()
        with self._cond:
            self._closed = True
            self._pending.clear()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _start_worker(self) -> None:
        """Start the thread if tasks wait and none runs (call with the lock held)."""
        if self._thread is None and self._pending and not self._closed:
            self._thread = threading.Thread(target=self._work, name="int8-range-check", daemon=True)
            self._thread.start()

    def _after_fork(self) -> None:
        """In a forked child, replace the parent's lock and thread, which did not come along."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._cond = threading.Condition()
            self._thread = None
            self._probe.after_fork()
            with self._cond:
                self._start_worker()

    def _work(self) -> None:
        while True:
            with self._cond:
                batch, self._pending = self._pending[:CHECK_BATCH], self._pending[CHECK_BATCH:]
                if not batch:
                    self._probe.release()  # memory only while checking
                    self._thread = None
                    self._cond.notify_all()
                    return
            try:
                shares = self._probe.clipped(batch)
                self._on_results([(t, *r) for t, r in zip(batch, shares, strict=True)])
            except Exception as exc:  # reported, never raised into serving
                names = ", ".join(repr(t.info.name) for t in batch)
                log.error("int8 range check of %s failed: %s", names, exc)


_LIVE: weakref.WeakSet[RangeChecker] = weakref.WeakSet()


@atexit.register
def _stop_checks() -> None:
    """Runs before the interpreter tears down, with threads still alive (see RangeChecker)."""
    for checker in list(_LIVE):
        checker.close()


def warn_if_clipped(name: str, share: float, where: str) -> None:
    """Log why a task's int8 scores may drop, and what to do, when `share` passes CLIPPED_WARNING."""
    if share > CLIPPED_WARNING:
        log.warning(
            "task %r clips %.2f%% of the values of an int8 activation (%s) on the bundle's "
            "calibration texts: its int8 scores may fall below fp32. Check with `bitfit-deploy "
            "eval --variant int8`; serve it with the fp32 variant, or export the bundle again with "
            "the task (--task) so that calibration covers it.",
            name,
            100 * share,
            where,
        )
