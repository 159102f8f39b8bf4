"""The runtime's parts on their own: run planning, the Gather graph bytes, score conversion."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitfit_deploy.contract import HEAD_BIAS, HEAD_WEIGHT
from bitfit_deploy.manifest import BiasInput
from bitfit_deploy.runtime._gather_graph import ROWS, TABLE_PREFIX, gather_graph
from bitfit_deploy.runtime.batching import plan_runs
from bitfit_deploy.runtime.engine import HostEngine
from bitfit_deploy.runtime.providers import create_session
from bitfit_deploy.runtime.registry import BiasLayout, LoadedTask
from bitfit_deploy.runtime.results import TaskInfo, make_prediction


def test_plan_runs_groups_similar_lengths_and_covers_every_row():
    lengths = [30, 5, 29, 6, 5, 31, 7]
    runs = plan_runs(lengths, 3)
    assert runs == [[1, 4, 3], [6, 2, 0], [5]]
    assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
    assert plan_runs([], 4) == []
    with pytest.raises(ValueError):
        plan_runs([1], 0)


def test_gather_graph_is_valid_onnx_and_gathers_rows():
    import onnx

    data = gather_graph([("a.bias", [3]), ("head.weight", ["labels", 2])])
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    session = create_session(data, "cpu", threads=1)
    table_a = np.arange(12, dtype=np.float32).reshape(4, 3)
    table_h = np.arange(16, dtype=np.float32).reshape(4, 2, 2)
    rows = np.array([2, 0, 2], dtype=np.int64)
    a, h = session.run(
        ["a.bias", "head.weight"],
        {ROWS: rows, TABLE_PREFIX + "a.bias": table_a, TABLE_PREFIX + "head.weight": table_h},
    )
    np.testing.assert_array_equal(a, table_a[rows])
    np.testing.assert_array_equal(h, table_h[rows])


@settings(max_examples=200, deadline=None)
@given(
    logits=st.lists(
        st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False), min_size=1, max_size=12
    ),
    multi=st.booleans(),
)
def test_make_prediction_matches_numpy_at_any_scale(logits, multi):
    """Scores as numpy's float64 softmax / sigmoid would give them, even for logits of +-1e4
    (no overflow), top label first among equals, from Python floats or a float32 row."""
    labels = [f"l{i}" for i in range(len(logits))]
    kind = "multi_label" if multi else "single_label"
    info = TaskInfo("t", labels, kind, num_labels=len(labels))
    x = np.array(logits, np.float64)
    with np.errstate(over="ignore"):
        want = 1 / (1 + np.exp(-x)) if multi else np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    for row in (logits, np.array(logits, np.float32).astype(np.float64)):
        got = make_prediction(info, row, False)
        probs = [got.scores[name] for name in labels]
        ref = want if row is logits else None
        if ref is not None:
            np.testing.assert_allclose(probs, ref, rtol=1e-12, atol=1e-300)
        assert got.label == labels[int(np.argmax(probs))] and got.score == max(probs)
        if multi:
            assert got.predicted_labels == [
                n for n, p in zip(labels, probs, strict=True) if p >= 0.5
            ]
        else:
            assert got.predicted_labels == [got.label] and sum(probs) == pytest.approx(1.0)


def test_make_prediction_by_problem_type():
    single = make_prediction(
        TaskInfo("s", ["n", "p"], "single_label", num_labels=2), np.array([0.0, np.log(3)]), False
    )
    assert (single.label, single.predicted_labels) == ("p", ["p"])
    assert single.score == pytest.approx(0.75) and single.scores["n"] == pytest.approx(0.25)
    multi = make_prediction(
        TaskInfo("m", ["x", "y", "z"], "multi_label", num_labels=3),
        np.array([2.0, -1.0, 0.5]),
        True,
    )
    assert multi.predicted_labels == ["x", "z"] and multi.label == "x" and multi.truncated
    assert multi.scores["y"] == pytest.approx(1 / (1 + np.e))
    reg = make_prediction(TaskInfo("r", [], "regression"), np.array([1.5]), False)
    assert reg.to_dict() == {
        "task": "r",
        "label": None,
        "score": 1.5,
        "scores": {},
        "value": 1.5,
        "predicted_labels": [],
        "truncated": False,
    }


def test_spin_wait_sets_ort_thread_spinning():
    """The server turns spinning off so idle ORT threads leave the cores to its event loop."""
    key = "session.intra_op.allow_spinning"
    data = gather_graph([("a.bias", [3])])
    quiet = create_session(data, "cpu", threads=2, spin_wait=False).get_session_options()
    assert quiet.get_session_config_entry(key) == "0"
    default = create_session(data, "cpu", threads=2).get_session_options()
    with pytest.raises(RuntimeError, match="does not have configuration"):
        default.get_session_config_entry(key)  # unset: ORT's default, spinning


def _loaded_task(name: str, row: np.ndarray, labels: int, hidden: int) -> LoadedTask:
    info = TaskInfo(name, [f"l{i}" for i in range(labels)], "single_label", num_labels=labels)
    head = np.full((labels, hidden), float(len(name)), np.float32)
    return LoadedTask(info, row, head, np.arange(labels, dtype=np.float32))


@settings(max_examples=60, deadline=None)
@given(
    dims=st.lists(st.integers(1, 7), min_size=1, max_size=5),
    batches=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=9), min_size=1, max_size=5),
    threads=st.integers(1, 3),
    scratch_rows=st.integers(0, 10),
)
def test_host_feeds_gather_each_rows_biases_whatever_came_before(
    dims, batches, threads, scratch_rows
):
    """Each bias input holds, row by row, the slice of that row's task, contiguous; feeds of
    earlier batches keep their values while the engine's reused buffer serves later ones, of
    any size (beyond the buffer's cap too), in any thread."""
    layout = BiasLayout.from_inputs([BiasInput(f"b{i}", d) for i, d in enumerate(dims)])
    rng = np.random.default_rng(len(dims))
    tasks = [
        _loaded_task(f"t{k}", rng.standard_normal(sum(dims)).astype(np.float32), 1 + k % 3, 4)
        for k in range(4)
    ]
    engine = HostEngine(None, layout, hidden=4)  # feeds never touch the session
    text = {"input_ids": np.zeros((1, 2), np.int64)}

    def build(batch: list[int]) -> tuple[list[int], dict[str, np.ndarray]]:
        return batch, engine.feeds([tasks[k] for k in batch], text)

    engine.row_stack.max_bytes = scratch_rows * sum(dims) * 4  # over it: arrays of their own
    with ThreadPoolExecutor(threads) as pool:
        made = list(pool.map(build, batches * 2))
    kept = engine.row_stack._free
    assert len(kept) <= engine.row_stack.keep
    largest = max((len(b) for b in batches if len(b) <= scratch_rows), default=0)
    assert max((len(b) for b in kept), default=0) >= largest, "the largest buffer is kept"
    for batch, feeds in made:
        for name, sl in layout.slices():
            want = np.stack([tasks[k].row[sl] for k in batch])
            np.testing.assert_array_equal(feeds[name], want)
            assert feeds[name].flags.c_contiguous and feeds[name].flags.owndata
        width = max(tasks[k].info.num_labels for k in batch)
        assert feeds[HEAD_WEIGHT].shape == (len(batch), width, 4)
        assert feeds[HEAD_BIAS].shape == (len(batch), width)
