"""The dynamic batcher on a fake runtime: mixing, limits, isolation of failures, draining."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from bitfit_deploy.runtime.batcher import (
    Batcher,
    BatcherClosedError,
    BatchMismatchError,
    BatchStats,
    Row,
)


class FakeRuntime:
    """Answers `task:text` per row; records every run; fails rows whose text is 'boom'."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.runs: list[list[Row]] = []
        self.gate = gate
        self.threads: set[str] = set()

    def predict_mixed(self, rows: Sequence[Row]) -> list[str]:
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        self.runs.append(list(rows))
        if any(text == "boom" for _, text in rows):
            raise ValueError("boom row")
        return [f"{task}:{text}" for task, text in rows]


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_concurrent_requests_of_several_tasks_share_one_run_and_get_their_own_rows() -> None:
    fake = FakeRuntime()
    stats: list[BatchStats] = []

    async def main() -> list[list[str]]:
        batcher = Batcher(
            fake.predict_mixed, max_batch_size=64, max_delay_ms=200, on_batch=stats.append
        )
        await batcher.start()
        requests = [[(f"t{i % 3}", f"x{i}-{j}") for j in range(i % 4 + 1)] for i in range(12)]
        answers = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()
        for request, answer in zip(requests, answers, strict=True):
            assert answer == [f"{t}:{x}" for t, x in request]
        return answers

    run(main())
    assert len(fake.runs) == 1
    assert stats[0].rows == sum(i % 4 + 1 for i in range(12))
    assert stats[0].requests == 12 and stats[0].tasks == 3
    assert all(name.startswith("bitfit-infer") for name in fake.threads)


def test_runs_never_exceed_max_batch_size_and_keep_arrival_order() -> None:
    fake = FakeRuntime()

    async def main() -> None:
        batcher = Batcher(fake.predict_mixed, max_batch_size=5, max_delay_ms=50)
        await batcher.start()
        requests = [[("a", f"{i}-{j}") for j in range(1 + i % 3)] for i in range(20)]
        answers = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()
        assert answers == [[f"a:{x}" for _, x in r] for r in requests]

    run(main())
    assert all(len(r) <= 5 for r in fake.runs)
    flat = [x for r in fake.runs for _, x in r]
    assert flat == [f"{i}-{j}" for i in range(20) for j in range(1 + i % 3)]


def test_a_request_larger_than_the_batch_runs_alone() -> None:
    fake = FakeRuntime()

    async def main() -> None:
        batcher = Batcher(fake.predict_mixed, max_batch_size=4, max_delay_ms=1)
        await batcher.start()
        big = [("a", str(i)) for i in range(10)]
        assert await batcher.submit(big) == [f"a:{i}" for i in range(10)]
        await batcher.stop()

    run(main())
    assert [len(r) for r in fake.runs] == [10]


def test_a_lone_request_is_answered_after_the_delay_without_a_full_batch() -> None:
    fake = FakeRuntime()

    async def main() -> None:
        batcher = Batcher(fake.predict_mixed, max_batch_size=1000, max_delay_ms=20)
        await batcher.start()
        assert await asyncio.wait_for(batcher.submit([("a", "x")]), 5) == ["a:x"]
        await batcher.stop()

    run(main())


def test_a_failing_request_fails_alone_and_its_batch_mates_are_answered() -> None:
    fake = FakeRuntime()

    async def main() -> None:
        batcher = Batcher(fake.predict_mixed, max_batch_size=64, max_delay_ms=100)
        await batcher.start()
        good1 = batcher.submit([("a", "1"), ("b", "2")])
        bad = batcher.submit([("a", "3"), ("c", "boom")])
        good2 = batcher.submit([("c", "4")])
        results = await asyncio.gather(good1, bad, good2, return_exceptions=True)
        await batcher.stop()
        assert results[0] == ["a:1", "b:2"]
        assert isinstance(results[1], ValueError) and "boom" in str(results[1])
        assert results[2] == ["c:4"]

    run(main())
    assert len(fake.runs) == 4  # the mixed run, then each request alone


def test_outputs_that_do_not_match_the_rows_fail_the_request() -> None:
    async def main() -> None:
        batcher = Batcher(lambda rows: ["only one"], max_batch_size=8, max_delay_ms=1)
        await batcher.start()
        with pytest.raises(BatchMismatchError, match="1 outputs for 2 rows"):
            await batcher.submit([("a", "x"), ("a", "y")])
        await batcher.stop()

    run(main())


def test_inference_runs_off_the_event_loop() -> None:
    gate = threading.Event()
    fake = FakeRuntime(gate)

    async def main() -> None:
        batcher = Batcher(fake.predict_mixed, max_batch_size=8, max_delay_ms=1)
        await batcher.start()
        pending = asyncio.ensure_future(batcher.submit([("a", "x")]))
        await asyncio.sleep(0.05)
        assert not pending.done()  # the run blocks in its thread, yet this coroutine runs
        gate.set()
        assert await pending == ["a:x"]
        await batcher.stop()

    run(main())


def test_stop_answers_queued_requests_then_refuses_new_ones() -> None:
    gate = threading.Event()
    fake = FakeRuntime(gate)
    depths: list[int] = []

    async def main() -> None:
        batcher = Batcher(
            fake.predict_mixed, max_batch_size=2, max_delay_ms=1, on_queue=depths.append
        )
        await batcher.start()
        pending = [asyncio.ensure_future(batcher.submit([("a", str(i))])) for i in range(7)]
        await asyncio.sleep(0.02)
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.02)
        assert not batcher.running
        with pytest.raises(BatcherClosedError):
            await batcher.submit([("a", "late")])
        gate.set()
        await stopping
        assert [p.result() for p in pending] == [[f"a:{i}"] for i in range(7)]

    run(main())
    assert max(depths) >= 5 and depths[-1] == 0
    assert sum(len(r) for r in fake.runs) == 7


def test_stop_with_a_timeout_fails_what_is_left() -> None:
    gate = threading.Event()
    fake = FakeRuntime(gate)

    async def main() -> None:
        batcher = Batcher(fake.predict_mixed, max_batch_size=1, max_delay_ms=0)
        await batcher.start()
        pending = [asyncio.ensure_future(batcher.submit([("a", str(i))])) for i in range(3)]
        await asyncio.sleep(0.02)
        await batcher.stop(timeout=0.05)
        gate.set()
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert any(isinstance(r, BatcherClosedError) for r in results)

    run(main())


def test_call_runs_on_the_inference_thread_between_batches() -> None:
    fake = FakeRuntime()

    async def main() -> None:
        batcher = Batcher(fake.predict_mixed, max_batch_size=4, max_delay_ms=1)
        await batcher.start()
        name = await batcher.call(lambda: threading.current_thread().name)
        assert name.startswith("bitfit-infer")
        assert await batcher.call(sum, [1, 2, 3]) == 6
        await batcher.stop()
        with pytest.raises(BatcherClosedError):
            await batcher.call(sum, [1])

    run(main())


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(lambda rows: rows, max_batch_size=0)
    with pytest.raises(ValueError, match="max_delay_ms"):
        Batcher(lambda rows: rows, max_delay_ms=-1)


def test_rows_count_as_queued_until_their_run_starts() -> None:
    fake = FakeRuntime()
    depths: list[int] = []

    async def main() -> None:
        batcher = Batcher(
            fake.predict_mixed, max_batch_size=64, max_delay_ms=300, on_queue=depths.append
        )
        await batcher.start()
        pending = [
            asyncio.ensure_future(batcher.submit([("a", "x"), ("b", "y")])) for _ in range(3)
        ]
        await asyncio.sleep(0.1)
        assert batcher.queued_rows == 6 and not fake.runs  # collecting, not yet run
        await asyncio.gather(*pending)
        assert batcher.queued_rows == 0
        await batcher.stop()

    run(main())
    assert depths[-1] == 0 and max(depths) == 6
