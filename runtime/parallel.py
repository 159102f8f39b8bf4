"""How a CPU runtime spreads one batch over its cores: inside each operator, or across rows.

"ops" is ONNX Runtime's own intra-op threading: every operator of one run is split over the
threads, which then wait for each other before the next operator. "rows" gives the session one
thread and runs a batch as one slice of consecutive rows per core, all at once (ORT releases the
GIL): no per-operator hand-off, and each core's activations are half (or a third...) the size, so
they stay in its cache. Rows are independent in the graph, so every row's logits are the same in
both modes. On a 2-core Xeon (`benchmarks/parallel_modes.py`, two runs), rows made int8 batches
1.08-1.45x faster and fp32 batches 1.04-1.13x; a single row cannot be split, so it runs on one
core: fp32 single rows took 1.4-1.7x longer, int8 ones the same (27 tokens) or 1.2x longer (128).
Hence "auto": rows for int8 on the CPU, ops otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bitfit_deploy.errors import InvalidInputError

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

PARALLEL_MODES = ("auto", "ops", "rows")


def available_cores(sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    """Physical cores this process may run on: its CPU affinity, hyperthread siblings counted once.

    Two slices on the two hyperthreads of one core would share its execution units (ORT's own
    default counts physical cores too). Falls back to the logical CPU count where the OS does not
    say (macOS, Windows, no sysfs).
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add((package, core))
    return max(1, len(cores))


def resolve_parallel(
    parallel: str,
    provider: str,
    variant: str,
    io_binding: bool,
    threads: int | None,
    max_batch_size: int = 32,
) -> tuple[str, int]:
    """("ops" or "rows", row slices per batch) for these settings; raise on a mode that cannot run.

    "auto" takes rows only for int8 on the CPU with runs of more than one row: a single row
    cannot be split, so it would get one core.
    """
    if parallel not in PARALLEL_MODES:
        raise InvalidInputError(
            f"parallel must be one of {', '.join(PARALLEL_MODES)}, got {parallel!r}."
        )
    host = provider == "cpu" and not io_binding
    if parallel == "rows" and not host:
        raise InvalidInputError(
            "parallel='rows' splits batches over CPU cores; it needs provider='cpu' without "
            "io_binding. Use parallel='ops' (or 'auto') here."
        )
    if parallel == "auto":
        parallel = "rows" if host and variant == "int8" and max_batch_size > 1 else "ops"
    if parallel == "ops":
        return "ops", 1
    return "rows", threads if threads is not None else available_cores()


class RowSlices:
    """Runs a batch as up to `count` slices of consecutive rows at once, one thread each.

    The calling thread runs the first slice; a pool of `count - 1` threads runs the rest.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0

    def _workers(self) -> ThreadPoolExecutor:
        """The pool, made on first use and again in a forked child (whose copy has no threads)."""
        if self._pool is None or self._pool_pid != os.getpid():
            # Imported here: concurrent.futures costs ~6 ms of import, which ops mode never needs.
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.count - 1, thread_name_prefix="bitfit-rows")
            self._pool_pid = os.getpid()
        return self._pool

    def run(
        self, run_one: Callable[[dict[str, np.ndarray]], np.ndarray], feeds: dict[str, np.ndarray]
    ) -> np.ndarray:
        """`run_one(feeds)` with its rows split into slices; the slices' outputs in row order."""
        rows = len(next(iter(feeds.values())))
        count = min(self.count, rows)
        if count < 2:
            return run_one(feeds)
        bounds = [rows * i // count for i in range(count + 1)]
        slices = [
            {name: array[lo:hi] for name, array in feeds.items()}
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        pool = self._workers()
        futures = [pool.submit(run_one, part) for part in slices[1:]]
        first = run_one(slices[0])
        return np.concatenate([first, *(f.result() for f in futures)])
