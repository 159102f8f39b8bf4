"""The task store: atomic writes, loading at start, following other writers, unload marks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from runtime_fixtures import SENTENCES, synthetic_delta

from bitfit_deploy.delta import to_bytes
from bitfit_deploy.errors import DeltaFormatError, FingerprintMismatchError, TaskNotFoundError
from bitfit_deploy.manifest import read_manifest
from bitfit_deploy.runtime import Runtime
from bitfit_deploy.runtime.store import (
    READY,
    UNAVAILABLE,
    MemoryTasks,
    StoreConflictError,
    StoreSync,
    TaskStore,
    TaskStoreError,
)


@pytest.fixture(scope="module")
def bundle(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bitfit_deploy.exporters.bundle import export_bundle

    out = tmp_path_factory.mktemp("store") / "bundle"
    export_bundle(out, model=str(tiny_bert))
    return out


@pytest.fixture(scope="module")
def deltas(bundle: Path) -> dict[str, bytes]:
    """Delta file bytes: two versions of 'a', one 'b', and bad files."""
    m = read_manifest(bundle)
    good = {
        "a1": to_bytes(synthetic_delta(m, "whatever", labels=["x", "y"], seed=1)),
        "a2": to_bytes(synthetic_delta(m, "whatever", labels=["p", "q", "r"], seed=2)),
        "b": to_bytes(synthetic_delta(m, "b", "regression", [], seed=3)),
    }
    foreign = to_bytes(synthetic_delta(m, "f", seed=4, fingerprint="0" * 64))
    return {**good, "truncated": good["a1"][: len(good["a1"]) // 2], "foreign": foreign}


def runtime(bundle: Path) -> Runtime:
    return Runtime(bundle, threads=1, max_batch_size=8)


def answers(rt: Runtime, task: str) -> list[dict[str, Any]]:
    return [p.to_dict() for p in rt.predict(task, SENTENCES)]


def reference(bundle: Path, data: bytes) -> list[dict[str, Any]]:
    """What a runtime that loaded `data` directly answers."""
    rt = runtime(bundle)
    rt.load_task_bytes(data, "t")
    return [{**p, "task": "t"} for p in answers(rt, "t")]


def same(served: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
    """Equal predictions, up to the task's name and float noise."""
    if len(served) != len(expected):
        return False
    for s, e in zip(served, expected, strict=True):
        if s["label"] != e["label"] or s["scores"].keys() != e["scores"].keys():
            return False
        if not np.allclose(list(s["scores"].values()), list(e["scores"].values()), atol=1e-6):
            return False
    return True


def listing(folder: Path) -> dict[str, bytes]:
    """Every file in `folder` (temp files too) with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_start_loads_every_delta_and_reports_bad_files_by_name(
    bundle: Path, deltas: dict[str, bytes], tmp_path: Path
) -> None:
    (tmp_path / "a.safetensors").write_bytes(deltas["a1"])
    (tmp_path / "b.safetensors").write_bytes(deltas["b"])
    (tmp_path / "broken.safetensors").write_bytes(deltas["truncated"])
    (tmp_path / "foreign.safetensors").write_bytes(deltas["foreign"])
    (tmp_path / "bad name.safetensors").write_bytes(deltas["a1"])
    (tmp_path / "notes.txt").write_text("not a task")
    rt = runtime(bundle)
    sync = StoreSync(TaskStore(tmp_path), rt)

    problems = sync.sync()

    assert sorted(rt.tasks) == ["a", "b"]
    assert len(problems) == 3
    assert any("broken.safetensors" in p and "DeltaFormatError" in p for p in problems)
    assert any("foreign.safetensors" in p and "FingerprintMismatchError" in p for p in problems)
    assert any("bad name.safetensors" in p and "rename" in p for p in problems)
    assert same(answers(rt, "a"), reference(bundle, deltas["a1"]))
    assert same(answers(rt, "b"), reference(bundle, deltas["b"]))
    states = {r["name"]: (r["state"], r["reason"]) for r in sync.index()}
    assert states["a"] == (READY, "") and states["broken"][0] == UNAVAILABLE
    assert "DeltaFormatError" in states["broken"][1] and "broken.safetensors" in states["broken"][1]
    assert str(tmp_path) not in states["broken"][1]  # index reasons do not show the folder
    assert states["bad name.safetensors"][0] == UNAVAILABLE  # every file of the store is listed
    assert "rename the file" in states["bad name.safetensors"][1]
    assert sync.sync() == []  # a bad file is reported once, not on every poll


def test_problems_at_start_are_logged_once(
    bundle: Path, deltas: dict[str, bytes], tmp_path: Path, caplog
) -> None:
    """`serve` prints the problems `build_app` returns, so that sync does not log them too;
    the poller's later syncs log theirs."""
    (tmp_path / "bad name.safetensors").write_bytes(deltas["a1"])
    sync = StoreSync(TaskStore(tmp_path), runtime(bundle))
    with caplog.at_level("WARNING", logger="bitfit_deploy.store"):
        (problem,) = sync.sync(log_problems=False)
        assert "bad name.safetensors" in problem and not caplog.records
        (tmp_path / "broken.safetensors").write_bytes(deltas["truncated"])
        (later,) = sync.sync()
    assert [r.getMessage() for r in caplog.records] == [later]


def test_put_writes_the_file_atomically_and_a_failed_upload_leaves_the_folder_unchanged(
    bundle: Path, deltas: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = runtime(bundle)
    sync = StoreSync(TaskStore(tmp_path), rt)
    assert sync.put("a", deltas["a1"]) is False
    assert listing(tmp_path) == {"a.safetensors": deltas["a1"]}
    assert same(answers(rt, "a"), reference(bundle, deltas["a1"]))

    for bad, error in [("truncated", DeltaFormatError), ("foreign", FingerprintMismatchError)]:
        with pytest.raises(error):
            sync.put("a", deltas[bad])
        with pytest.raises(error):
            sync.put("c", deltas[bad])
        assert listing(tmp_path) == {"a.safetensors": deltas["a1"]}
        assert sorted(rt.tasks) == ["a"]
        assert same(answers(rt, "a"), reference(bundle, deltas["a1"]))

    real_replace = os.replace

    def full_disk(src: Any, dst: Any) -> None:
        if str(dst).endswith(".safetensors"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(TaskStoreError, match="No space left"):
        sync.put("a", deltas["a2"])
    with pytest.raises(TaskStoreError):
        sync.put("c", deltas["b"])
    monkeypatch.undo()
    assert listing(tmp_path) == {"a.safetensors": deltas["a1"]}
    assert sorted(rt.tasks) == ["a"]  # the failed write was rolled back: old 'a', no 'c'
    assert same(answers(rt, "a"), reference(bundle, deltas["a1"]))

    assert sync.put("a", deltas["a2"]) is True
    assert listing(tmp_path) == {"a.safetensors": deltas["a2"]}
    assert same(answers(rt, "a"), reference(bundle, deltas["a2"]))


def test_a_second_replica_follows_every_change_and_keeps_serving_through_a_bad_file(
    bundle: Path, deltas: dict[str, bytes], tmp_path: Path
) -> None:
    one, two = runtime(bundle), runtime(bundle)
    first, second = StoreSync(TaskStore(tmp_path), one), StoreSync(TaskStore(tmp_path), two)
    first.put("a", deltas["a1"])
    first.put("b", deltas["b"])
    assert second.sync() == []
    assert sorted(two.tasks) == ["a", "b"] and same(answers(two, "a"), answers(one, "a"))

    first.put("a", deltas["a2"])
    assert second.sync() == []
    assert same(answers(two, "a"), reference(bundle, deltas["a2"]))

    path = tmp_path / "a.safetensors"
    with path.open("wb") as fh:  # another writer, not atomic, caught half-way
        fh.write(deltas["a1"][:1000])
    problems = second.sync()
    assert len(problems) == 1 and "a.safetensors" in problems[0] and "previous" in problems[0]
    assert same(answers(two, "a"), reference(bundle, deltas["a2"]))
    row = next(r for r in second.index() if r["name"] == "a")
    assert row["state"] == READY and "previous version" in row["reason"]
    with path.open("ab") as fh:
        fh.write(deltas["a1"][1000:])
    assert second.sync() == []
    assert same(answers(two, "a"), reference(bundle, deltas["a1"]))

    first.delete("a")
    assert not path.exists()
    second.sync()
    assert sorted(two.tasks) == ["b"] and [r["name"] for r in second.index()] == ["b"]


def test_unload_and_load_hold_on_every_replica_sharing_the_store(
    bundle: Path, deltas: dict[str, bytes], tmp_path: Path
) -> None:
    one, two = runtime(bundle), runtime(bundle)
    first, second = StoreSync(TaskStore(tmp_path), one), StoreSync(TaskStore(tmp_path), two)
    first.put("a", deltas["a1"])
    second.sync()

    first.unload("a")
    assert (tmp_path / "a.unloaded").exists() and (tmp_path / "a.safetensors").exists()
    second.sync()
    assert "a" not in one.tasks and "a" not in two.tasks
    assert [(r["name"], r["state"]) for r in second.index()] == [("a", UNAVAILABLE)]
    restarted = runtime(bundle)
    StoreSync(TaskStore(tmp_path), restarted).sync()
    assert "a" not in restarted.tasks  # the mark outlives a restart

    second.load("a")
    assert not (tmp_path / "a.unloaded").exists()
    first.sync()
    assert same(answers(one, "a"), reference(bundle, deltas["a1"]))
    assert same(answers(two, "a"), reference(bundle, deltas["a1"]))
    with pytest.raises(TaskNotFoundError):
        first.load("nope")
    with pytest.raises(TaskNotFoundError):
        first.unload("nope")
    with pytest.raises(TaskNotFoundError):
        first.delete("nope")


def test_tasks_from_the_bundle_or_task_files_are_not_the_stores(
    bundle: Path, deltas: dict[str, bytes], tmp_path: Path
) -> None:
    rt = runtime(bundle)
    rt.load_task_bytes(deltas["b"], "fixed")
    (tmp_path / "fixed.safetensors").write_bytes(deltas["a1"])
    sync = StoreSync(TaskStore(tmp_path), rt)
    problems = sync.sync()
    assert len(problems) == 1 and "fixed.safetensors" in problems[0]
    assert same(answers(rt, "fixed"), reference(bundle, deltas["b"]))  # the file did not replace it
    for call in (lambda: sync.put("fixed", deltas["a1"]), lambda: sync.delete("fixed")):
        with pytest.raises(StoreConflictError, match="ships with the bundle"):
            call()
    sync.load("fixed")  # loaded already: nothing to do
    with pytest.raises(StoreConflictError):
        sync.unload("fixed")
    assert "fixed" in rt.tasks
    assert next(r for r in sync.index() if r["name"] == "fixed")["state"] == READY


def test_memory_tasks_say_they_are_not_durable_and_refuse_repository_calls(
    bundle: Path, deltas: dict[str, bytes]
) -> None:
    rt = runtime(bundle)
    memory = MemoryTasks(rt)
    assert memory.put("a", deltas["a1"]) is False and memory.put("a", deltas["a2"]) is True
    assert memory.describe()["durable"] is False and "--tasks-dir" in memory.describe()["detail"]
    assert memory.index() == [{"name": "a", "version": "1", "state": READY, "reason": ""}]
    with pytest.raises(StoreConflictError, match="--tasks-dir"):
        memory.unload("a")
    memory.delete("a")
    assert rt.tasks == {}


def test_a_missing_store_folder_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(TaskStoreError, match="mkdir"):
        TaskStore(tmp_path / "none")


KIND_WORDS = {"fifo": "named pipe", "device": "character device", "folder": "a folder"}
"""How the readers' errors name each kind of path that is no regular file."""


def _make_odd(path: Path, kind: str) -> str:
    """Make `path` a FIFO, a link to /dev/zero or a folder; return how errors name it."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    return KIND_WORDS[kind]


def _within(seconds: float, call):  # noqa: ANN001, ANN202
    """`call()`'s result, failing (not hanging) if it blocks: a FIFO open waits for a writer."""
    import threading

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.parametrize(
    "kind", ["fifo", "folder", "device", "link to a device", "socket", "link loop", "dangling link"]
)
def test_a_store_entry_that_is_no_regular_file_is_skipped_not_read(
    bundle: Path, deltas: dict[str, bytes], tmp_path: Path, kind: str
) -> None:
    """A FIFO named x.safetensors hung the server for good (its open waits for a writer, and
    SIGTERM then waited on it); a link to /dev/zero would be read until memory ran out. Both,
    and other non-files, are reported by name and skipped; the other tasks keep serving."""
    import socket

    (tmp_path / "a.safetensors").write_bytes(deltas["a1"])
    odd = tmp_path / "odd.safetensors"
    if kind == "fifo":
        os.mkfifo(odd)
    elif kind == "folder":
        odd.mkdir()
    elif kind == "device":
        odd.symlink_to("/dev/null")
    elif kind == "link to a device":
        odd.symlink_to("/dev/zero")
    elif kind == "link loop":  # ELOOP at stat: start-up was a traceback, later polls stopped
        odd.symlink_to(odd.name)
    elif kind == "dangling link":
        odd.symlink_to("nothing-here.safetensors")
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(odd))
    rt = runtime(bundle)
    sync = StoreSync(TaskStore(tmp_path), rt)
    problems = _within(10, sync.sync)
    assert sorted(rt.tasks) == ["a"]
    if kind != "folder":  # a folder is no file to the scan at all
        (problem,) = problems
        assert "odd.safetensors" in problem
        assert "not a regular file" in problem or "cannot read task store file" in problem
    assert same(answers(rt, "a"), reference(bundle, deltas["a1"]))
    assert _within(10, sync.sync) == []  # reported once
    (tmp_path / "b.safetensors").write_bytes(deltas["b"])  # the store is still followed
    assert _within(10, sync.sync) == [] and sorted(rt.tasks) == ["a", "b"]


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_every_reader_of_a_named_file_refuses_one_that_is_no_regular_file(
    bundle: Path, tmp_path: Path, kind: str
) -> None:
    """A delta, a manifest or a bundle file that is a FIFO, a device or a folder is a typed
    error naming what it is, at once; inspect says so on one line."""
    from click.testing import CliRunner

    from bitfit_deploy.cli import cli
    from bitfit_deploy.delta import load_delta
    from bitfit_deploy.errors import BundleError
    from bitfit_deploy.integrity import sha256_file
    from bitfit_deploy.manifest import read_manifest

    odd = tmp_path / "odd.safetensors"
    what = _make_odd(odd, kind)
    with pytest.raises(DeltaFormatError, match=what):
        _within(10, lambda: load_delta(odd))
    with pytest.raises(BundleError, match=what):
        _within(10, lambda: sha256_file(odd))
    copy = tmp_path / "bundle"
    import shutil

    shutil.copytree(bundle, copy)
    (copy / "manifest.json").unlink()
    _make_odd(copy / "manifest.json", kind)
    with pytest.raises(BundleError):
        _within(10, lambda: read_manifest(copy))
    if kind != "folder":  # inspect reads a folder as a merged model folder
        result = _within(20, lambda: CliRunner().invoke(cli, ["inspect", str(odd)]))
        assert result.exit_code != 0 and what in result.output


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_data_calibration_and_marker_readers_refuse_what_is_no_file(
    bundle: Path, tmp_path: Path, kind: str, monkeypatch
) -> None:
    """Training and eval data, a calibration file and a verified marker that are a FIFO hung,
    and a link to /dev/zero was read until a MemoryError; each is now refused (data) or
    ignored (a marker: the cache only makes opening faster)."""
    from bitfit_deploy.data import load_task_data
    from bitfit_deploy.errors import DataError
    from bitfit_deploy.exporters.calibrate import read_calibration_texts

    def odd(name: str) -> Path:
        _make_odd(tmp_path / name, kind)
        return tmp_path / name

    what = KIND_WORDS[kind]
    for name in ("train.tsv", "train.jsonl", "train.parquet", "train.tsv.gz"):
        with pytest.raises(DataError, match=what):
            _within(10, lambda name=name: load_task_data(odd(name)))
    with pytest.raises(DataError, match=what):
        _within(10, lambda: read_calibration_texts(odd("calibration.txt")))

    from bitfit_deploy.integrity import _marker_path

    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("BITFIT_DEPLOY_CACHE_DIR", str(markers))
    for file in bundle.iterdir():  # where each bundle file's marker would be
        if file.is_file():
            marker = _marker_path(markers, file)
            if kind == "fifo":
                os.mkfifo(marker)
            else:
                marker.symlink_to("/dev/zero")
    rt = _within(30, lambda: runtime(bundle))  # the files are hashed, as without markers
    assert rt.manifest.variants


def test_predict_input_refuses_a_device_and_reads_a_pipe(tmp_path: Path) -> None:
    import io

    from bitfit_deploy.commands._inputs import read_input
    from bitfit_deploy.errors import InvalidInputError

    with open("/dev/zero", "rb") as zero, pytest.raises(InvalidInputError, match="a device"):
        read_input(zero)
    with pytest.raises(InvalidInputError, match="more than 8 bytes"):
        read_input(io.BytesIO(b"x" * 9), limit=8)
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"a\nb\n")
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:  # `--input -` from a pipe, or <(command)
        assert read_input(pipe) == b"a\nb\n"


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_bundle_file_that_is_no_regular_file_is_named_as_such(
    bundle: Path, tmp_path: Path, kind: str
):
    """A tokenizer.json that is a FIFO was reported as missing ("lacks tokenizer.json")."""
    import shutil

    from bitfit_deploy.errors import BundleError

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    target = copy / "tokenizer.json"
    target.unlink()
    what = _make_odd(target, kind)
    with pytest.raises(BundleError, match=f"tokenizer.json' is .*{what}.*export the bundle again"):
        _within(20, lambda: runtime(copy))
