"""parallel="ops" | "rows" | "auto": how a CPU runtime spreads a batch over its cores."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitfit_deploy.errors import InvalidInputError
from bitfit_deploy.runtime.parallel import RowSlices, available_cores, resolve_parallel


@pytest.mark.parametrize(
    ("args", "want"),
    [
        (("auto", "cpu", "int8", False, 4), ("rows", 4)),
        (("auto", "cpu", "fp32", False, 4), ("ops", 1)),
        (("auto", "cpu", "int8", True, 4), ("ops", 1)),  # I/O binding gathers on the device
        (("auto", "cuda", "int8", True, 4), ("ops", 1)),
        (("rows", "cpu", "fp32", False, 3), ("rows", 3)),
        (("ops", "cpu", "int8", False, 3), ("ops", 1)),
        (("rows", "cpu", "int8", False, None), ("rows", available_cores())),
        (("auto", "cpu", "int8", False, 4, 1), ("ops", 1)),  # runs of one row cannot be split
        (("rows", "cpu", "int8", False, 4, 1), ("rows", 4)),
    ],
)
def test_resolve_parallel(args, want):
    assert resolve_parallel(*args) == want


def _topology(root, cpus: dict[int, tuple[int, int]]):
    for cpu, (package, core) in cpus.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text(f"{package}\n")
        (folder / "core_id").write_text(f"{core}\n")
    return root


def test_available_cores_counts_hyperthread_siblings_once(tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    # 2 packages x 1 core x 2 threads, then 4 separate cores
    smt = _topology(tmp_path / "smt", {0: (0, 0), 1: (0, 0), 2: (1, 0), 3: (1, 0)})
    assert available_cores(smt) == 2
    plain = _topology(tmp_path / "plain", {0: (0, 0), 1: (0, 1), 2: (0, 2), 3: (0, 3)})
    assert available_cores(plain) == 4
    assert available_cores(tmp_path / "missing") == 4  # no sysfs: logical CPUs


def test_rows_needs_the_cpu_without_binding():
    with pytest.raises(InvalidInputError, match="provider='cpu' without io_binding"):
        resolve_parallel("rows", "cuda", "int8", True, 2)
    with pytest.raises(InvalidInputError, match="provider='cpu' without io_binding"):
        resolve_parallel("rows", "cpu", "int8", True, 2)
    with pytest.raises(InvalidInputError, match="auto, ops, rows"):
        resolve_parallel("cores", "cpu", "int8", False, 2)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 50), count=st.integers(1, 6), width=st.integers(1, 4))
def test_slices_cover_every_row_once_in_order(rows, count, width):
    feeds = {
        "a": np.arange(rows * width, dtype=np.float32).reshape(rows, width),
        "b": np.arange(rows, dtype=np.int64)[:, None].repeat(3, 1),
    }
    seen: list[tuple[int, str]] = []
    lock = threading.Lock()

    def run_one(part: dict[str, np.ndarray]) -> np.ndarray:
        assert len(part["a"]) == len(part["b"]) >= 1
        with lock:
            seen.append((len(part["a"]), threading.current_thread().name))
        return part["a"] * 2 + part["b"][:, :1]

    slices = RowSlices(count)
    out = slices.run(run_one, feeds)
    np.testing.assert_array_equal(out, feeds["a"] * 2 + feeds["b"][:, :1])
    assert len(seen) == min(count, rows)
    sizes = [n for n, _ in seen]
    assert sum(sizes) == rows and max(sizes) - min(sizes) <= 1  # even slices


def test_slices_run_at_once_on_separate_threads():
    barrier = threading.Barrier(3, timeout=10)  # passes only if all 3 slices run together
    names = set()

    def run_one(part: dict[str, np.ndarray]) -> np.ndarray:
        barrier.wait()
        names.add(threading.current_thread().name)
        return part["x"]

    out = RowSlices(3).run(run_one, {"x": np.arange(7)})
    np.testing.assert_array_equal(out, np.arange(7))
    assert len(names) == 3


def test_a_failing_slice_raises_to_the_caller():
    def run_one(part: dict[str, np.ndarray]) -> np.ndarray:
        if part["x"][0] > 0:
            raise RuntimeError("slice failed")
        return part["x"]

    with pytest.raises(RuntimeError, match="slice failed"):
        RowSlices(2).run(run_one, {"x": np.arange(4)})


@pytest.fixture(scope="module")
def int8_bundle(tiny_int8_bundle):
    return tiny_int8_bundle


@pytest.mark.parametrize(
    ("variant", "parallel", "mode", "session_threads"),
    [
        ("int8", "auto", "rows", 1),
        ("fp32", "auto", "ops", 2),
        ("fp32", "rows", "rows", 1),
        ("int8", "ops", "ops", 2),
    ],
)
def test_runtime_sessions_follow_the_mode(int8_bundle, variant, parallel, mode, session_threads):
    from bitfit_deploy.runtime import Runtime

    rt = Runtime(int8_bundle, threads=2, variant=variant, parallel=parallel)
    assert rt.parallel == mode
    options = rt._engine.session.get_session_options()
    assert options.intra_op_num_threads == session_threads
    assert rt._engine.slices.count == (2 if mode == "rows" else 1)


def test_runtime_rejects_rows_with_io_binding(int8_bundle):
    from bitfit_deploy.runtime import Runtime

    with pytest.raises(InvalidInputError, match="parallel='rows'"):
        Runtime(int8_bundle, variant="int8", parallel="rows", io_binding=True)


@pytest.mark.parametrize("parallel", ["auto", "ops", "rows"])
def test_serve_config_passes_the_mode_to_the_runtime(int8_bundle, parallel):
    from bitfit_deploy.runtime.app import ServeConfig, build_app

    built = build_app(ServeConfig(int8_bundle, variant="int8", threads=2, parallel=parallel))
    assert built.runtime.parallel == ("ops" if parallel == "ops" else "rows")


def test_concurrent_callers_share_the_slice_pool(int8_bundle, tmp_path):
    """Several threads predicting at once on one rows runtime get their own answers, in order."""
    from concurrent.futures import ThreadPoolExecutor

    from runtime_fixtures import SENTENCES, synthetic_delta

    from bitfit_deploy.delta import save_delta
    from bitfit_deploy.manifest import read_manifest
    from bitfit_deploy.runtime import Runtime

    rt = Runtime(int8_bundle, threads=2, variant="int8", parallel="rows", max_batch_size=4)
    manifest = read_manifest(int8_bundle)
    for seed in range(3):
        delta = synthetic_delta(manifest, f"t{seed}", seed=seed)
        rt.load_task(save_delta(delta, tmp_path / f"t{seed}.safetensors"))
    jobs = [
        [(f"t{(i + j) % 3}", SENTENCES[(i * 7 + j) % len(SENTENCES)]) for j in range(1 + i % 9)]
        for i in range(24)
    ]
    want = [[p.scores for p in rt.predict_mixed(job)] for job in jobs]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda job: [p.scores for p in rt.predict_mixed(job)], jobs))
    assert got == want


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_slices_still_run_in_a_forked_child():
    """A forked child's copy of the pool has no threads; it gets a pool of its own, not a hang."""
    from runtime_fixtures import run_in_fork

    slices = RowSlices(2)
    feeds = {"x": np.arange(6)}
    np.testing.assert_array_equal(slices.run(lambda part: part["x"] * 2, feeds), feeds["x"] * 2)
    in_child = lambda: (slices.run(lambda part: part["x"] * 2, feeds) == feeds["x"] * 2).all()  # noqa: E731
    assert run_in_fork(in_child) == "ok"
