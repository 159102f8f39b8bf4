"""Dynamic batching: rows of any tasks from concurrent requests become one runtime run.

A request is a list of `(task, input)` rows. The loop takes queued requests in arrival order
until `max_batch_size` rows or `max_delay_ms` after the first one, runs them as ONE call of
`run(rows)` (the runtime's `predict_mixed`) in a worker thread so the event loop keeps
accepting, checks that the outputs match the rows one to one, and answers each request with
its own slice. A run that raises is retried request by request, so a failing request fails
alone and never its batch-mates. The worker thread is the only one that touches the runtime:
`call()` runs other runtime work (loading a task) on it, between batches.

Example:
    batcher = Batcher(runtime.predict_mixed, max_batch_size=32, max_delay_ms=5)
    await batcher.start()
    predictions = await batcher.submit([("sst2", "a fine film"), ("mnli", ("a", "b"))])
    await batcher.stop()
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

Row = tuple[str, Any]
"""One input row: the task name and the text (or text pair)."""
RunFn = Callable[[list[Row]], Sequence[Any]]
T = TypeVar("T")


class BatcherClosedError(RuntimeError):
    """The batcher is stopping or stopped and takes no new requests."""


class BatchMismatchError(RuntimeError):
    """The runtime answered a different number of outputs than it was given rows."""


@dataclass(frozen=True)
class BatchStats:
    """What one runtime run held: rows, requests, distinct tasks, and its duration."""

    rows: int
    requests: int
    tasks: int
    seconds: float


@dataclass
class _Request:
    rows: list[Row]
    future: asyncio.Future[list[Any]]


class Batcher:
    """Collects requests into mixed-task batches for one runtime; see the module docstring."""

    def __init__(
        self,
        run: RunFn,
        max_batch_size: int = 32,
        max_delay_ms: float = 5.0,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_delay_ms < 0:
            raise ValueError(f"max_delay_ms must not be negative, got {max_delay_ms}")
        self._run_fn = run
        self.max_batch_size = int(max_batch_size)
        self.max_delay = float(max_delay_ms) / 1000.0
        self._on_batch = on_batch
        self._on_queue = on_queue
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_rows = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        """True between `start()` and `stop()`: new requests are accepted."""
        return self._task is not None and not self._closed

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a batch (not counting the batch being run)."""
        return self._queued_rows

    async def start(self) -> None:
        """Start the batching loop on the running event loop and its worker thread."""
        if self._task is not None:
            raise RuntimeError("the batcher is started already")
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bitfit-infer")
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="bitfit-batcher")

    async def submit(self, rows: Sequence[Row]) -> list[Any]:
        """Queue `rows` and wait for their outputs, in the same order."""
        if not self.running:
            raise BatcherClosedError(
                "the server is shutting down and takes no new requests; retry elsewhere."
            )
        if not rows:
            return []
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(list(rows), future))
        self._set_queued(self._queued_rows + len(rows))
        assert self._wakeup is not None
        self._wakeup.set()
        return await future

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the inference thread, never at the same time as a batch."""
        if self._executor is None:
            raise BatcherClosedError("the batcher is not running.")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def stop(self, timeout: float | None = None) -> None:
        """Take no new requests, answer every queued one, then stop the loop and the thread.

        Requests still queued after `timeout` seconds fail with BatcherClosedError.
        """
        if self._task is None:
            return
        self._closed = True
        assert self._wakeup is not None
        self._wakeup.set()
        drained = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except asyncio.TimeoutError:
            drained = False
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(
                    BatcherClosedError("the server stopped before answering.")
                )
        self._set_queued(0)
        self._task = None
        if self._executor is not None:
            # After a timeout the thread may still be in a run: do not block the loop on it.
            self._executor.shutdown(wait=drained, cancel_futures=True)
            self._executor = None

    async def _loop(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch: list[_Request] = []
            try:
                taken = await self._collect(batch)
            except asyncio.CancelledError:
                _fail_closed(batch)
                raise
            self._set_queued(
                self._queued_rows - taken
            )  # rows leave the queue when their run starts
            if batch:
                await self._run(batch)

    async def _collect(self, batch: list[_Request]) -> int:
        """Fill `batch` until it is full, the next request does not fit, or the delay ends.

        Returns the rows taken off the queue (cancelled requests included).
        """
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay
        rows = taken = 0
        while True:
            while self._queue and (
                not batch or rows + len(self._queue[0].rows) <= self.max_batch_size
            ):
                request = self._queue.popleft()
                taken += len(request.rows)
                if request.future.done():  # the caller gave up (cancelled) while queued
                    continue
                batch.append(request)
                rows += len(request.rows)
            if rows >= self.max_batch_size or self._queue or self._closed:
                return taken
            remaining = deadline - loop.time()
            if remaining <= 0:
                return taken
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return taken

    async def _run(self, batch: list[_Request]) -> None:
        """Run one batch; on failure, run its requests one by one so only the culprit fails."""
        rows = [row for request in batch for row in request.rows]
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, self._run_checked, rows)
        except asyncio.CancelledError:
            _fail_closed(batch)
            raise
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc=exc)
            else:
                for request in batch:
                    await self._run([request])
            return
        if self._on_batch is not None:
            tasks = len({task for task, _ in rows})
            self._on_batch(BatchStats(len(rows), len(batch), tasks, time.perf_counter() - start))
        offset = 0
        for request in batch:
            n = len(request.rows)
            _settle(request.future, result=outputs[offset : offset + n])
            offset += n

    def _run_checked(self, rows: list[Row]) -> list[Any]:
        outputs = list(self._run_fn(rows))
        if len(outputs) != len(rows):
            raise BatchMismatchError(
                f"the runtime answered {len(outputs)} outputs for {len(rows)} rows."
            )
        return outputs

    def _set_queued(self, rows: int) -> None:
        self._queued_rows = rows
        if self._on_queue is not None:
            self._on_queue(rows)


def _settle(
    future: asyncio.Future[list[Any]],
    result: list[Any] | None = None,
    exc: BaseException | None = None,
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result if result is not None else [])


def _fail_closed(batch: list[_Request]) -> None:
    for request in batch:
        _settle(request.future, exc=BatcherClosedError("the server stopped before answering."))
