"""The optimized-graph cache: a later CPU session loads ORT's saved optimized graph and answers alike."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from runtime_fixtures import SENTENCES, synthetic_delta

from bitfit_deploy import integrity
from bitfit_deploy.delta import save_delta
from bitfit_deploy.manifest import read_manifest
from bitfit_deploy.runtime import Runtime
from bitfit_deploy.runtime import optimized_graphs as cache

FROM_CACHE = "session from the optimized graph"


@pytest.fixture(scope="module")
def bundle(tiny_int8_bundle, tmp_path_factory):
    """The tiny int8 bundle and one task delta for it."""
    delta = synthetic_delta(read_manifest(tiny_int8_bundle), "mood", seed=3)
    return tiny_int8_bundle, save_delta(delta, tmp_path_factory.mktemp("opt") / "mood.safetensors")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A cache folder of this test's own."""
    monkeypatch.setenv(integrity.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "optimized"


def scores(bundle, variant: str = "fp32", **kwargs) -> np.ndarray:
    path, delta = bundle
    rt = Runtime(path, threads=1, variant=variant, check_int8_ranges=False, **kwargs)
    rt.load_task(delta)
    return np.array([p.scores["positive"] for p in rt.predict("mood", SENTENCES)])


def packed_weights(entry) -> list[str]:
    """Initializers of a saved graph whose packed form ORT stored in the weights file."""
    import onnx

    graph = onnx.load(str(entry / cache.GRAPH_FILE), load_external_data=False).graph
    return [
        t.name
        for t in graph.initializer
        if any(e.key.startswith("prepacked") for e in t.external_data)
    ]


def entries(folder) -> list:
    return (
        sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []
    )


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_a_second_runtime_loads_the_saved_graph_and_answers_the_same(
    bundle, folder, variant, monkeypatch, caplog
):
    first = scores(bundle, variant)
    saved = entries(folder)
    assert len(saved) == 1
    assert {p.name for p in saved[0].iterdir()} == {cache.GRAPH_FILE, cache.WEIGHTS_FILE}
    with caplog.at_level(logging.DEBUG, logger="bitfit_deploy.runtime.providers"):
        second = scores(bundle, variant)
    assert FROM_CACHE in caplog.text
    assert packed_weights(saved[0]), "the entry should hold the weights as the kernels pack them"
    monkeypatch.setenv(integrity.CACHE_ENV, "")  # cache off: the session from the bundle alone
    plain = scores(bundle, variant)
    np.testing.assert_allclose(second, plain, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(first, plain, rtol=1e-6, atol=1e-7)
    assert entries(folder) == saved


def test_a_damaged_entry_is_rebuilt_and_serving_goes_on(bundle, folder, caplog):
    want = scores(bundle)
    (entry,) = entries(folder)
    weights = entry / cache.WEIGHTS_FILE
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:
        fh.truncate(size // 3)
    with caplog.at_level(logging.WARNING, logger="bitfit_deploy.runtime.providers"):
        got = scores(bundle)
    assert "failed to load" in caplog.text
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert weights.stat().st_size == size  # written again, whole


def test_no_cache_folder_means_no_saved_graph(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv(integrity.CACHE_ENV, "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    scores(bundle)
    assert not (tmp_path / "xdg").exists()


def test_optimized_graphs_can_be_turned_off_alone(bundle, folder, monkeypatch):
    monkeypatch.setenv(cache.ENV, "0")
    monkeypatch.setattr(integrity, "RACY_SECONDS", 0.0)  # markers even for a fresh bundle
    scores(bundle)
    assert entries(folder) == []
    assert any(folder.parent.glob("*.json"))  # the verified markers are still written


def test_an_unwritable_cache_folder_only_costs_the_saving(bundle, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(integrity.CACHE_ENV, str(blocker))
    assert scores(bundle).shape == (len(SENTENCES),)


def test_a_failed_save_still_opens_the_bundle(bundle, folder, monkeypatch, tmp_path, caplog):
    """ORT cannot write the optimized graph (here: its folder is gone): the session opens anyway."""
    monkeypatch.setattr(cache, "new_entry", lambda root: tmp_path / "gone" / "deeper")
    with caplog.at_level(logging.WARNING, logger="bitfit_deploy.runtime.providers"):
        got = scores(bundle)
    assert got.shape == (len(SENTENCES),)
    assert "could not save the optimized graph" in caplog.text
    assert entries(folder) == []


def test_keys_change_with_the_graph_the_runtime_version_and_the_layout():
    key = cache.entry_key(["a" * 64, "b" * 64], "1.0")
    assert key == cache.entry_key(["a" * 64, "b" * 64], "1.0")
    assert key != cache.entry_key(["c" * 64, "b" * 64], "1.0")
    assert key != cache.entry_key(["a" * 64, "c" * 64], "1.0")
    assert key != cache.entry_key(["a" * 64, "b" * 64], "1.1")
    assert key != cache.entry_key(["a" * 64, "b" * 64], "1.0", layout=cache.LAYOUT - 1)


def test_only_the_newest_entries_are_kept(tmp_path):
    root = tmp_path / "optimized"
    for i in range(cache.KEEP + 2):
        old = root / f"old{i}"
        old.mkdir(parents=True)
        os.utime(old, (1000 + i, 1000 + i))
    tmp = cache.new_entry(root)
    for name in (cache.GRAPH_FILE, cache.WEIGHTS_FILE):
        (tmp / name).write_bytes(b"x")
    cache.publish(tmp, root, "new")
    kept = {p.name for p in root.iterdir()}
    assert kept == {"new", *(f"old{i}" for i in range(3, cache.KEEP + 2))}


def test_a_second_publisher_of_the_same_entry_leaves_the_first(tmp_path):
    root = tmp_path / "optimized"
    for content in (b"first", b"second"):
        tmp = cache.new_entry(root)
        for name in (cache.GRAPH_FILE, cache.WEIGHTS_FILE):
            (tmp / name).write_bytes(content)
        cache.publish(tmp, root, "k")
    assert (root / "k" / cache.GRAPH_FILE).read_bytes() == b"first"
    assert [p.name for p in root.iterdir()] == ["k"]


def test_cache_command_lists_and_clears_markers_and_graphs(bundle, folder, monkeypatch):
    """`bitfit-deploy cache` shows what an open left behind; `--clear` removes it all, and the
    next open works (and fills the cache again)."""
    from click.testing import CliRunner

    from bitfit_deploy.cli import cli

    monkeypatch.setattr(integrity, "RACY_SECONDS", 0.0)  # markers even for files just written
    runner = CliRunner()
    empty = runner.invoke(cli, ["cache"])
    assert empty.exit_code == 0, empty.output
    assert "verified markers: 0" in empty.output and "optimized graphs: 0" in empty.output
    want = scores(bundle)
    (entry,) = entries(folder)
    markers = sorted(folder.parent.glob("*.json"))
    assert markers
    shown = runner.invoke(cli, ["cache"])
    assert shown.exit_code == 0, shown.output
    assert f"verified markers: {len(markers)}" in shown.output
    assert "optimized graphs: 1" in shown.output and entry.name in shown.output
    cleared = runner.invoke(cli, ["cache", "--clear"])
    assert cleared.exit_code == 0, cleared.output
    assert f"removed {len(markers)} verified markers and 1 optimized graphs" in cleared.output
    assert entries(folder) == [] and not list(folder.parent.glob("*.json"))
    np.testing.assert_allclose(scores(bundle), want, rtol=1e-6, atol=1e-7)
    assert len(entries(folder)) == 1

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("shutil.rmtree", refuse)
    stuck = runner.invoke(cli, ["cache", "--clear"])
    assert stuck.exit_code == 1 and "could not remove 1 of" in stuck.output
    assert "Permission denied" in stuck.output and len(entries(folder)) == 1
    monkeypatch.setenv(integrity.CACHE_ENV, "")
    off = runner.invoke(cli, ["cache", "--clear"])
    assert off.exit_code == 0 and "the cache is off" in off.output
    not_a_folder = folder.parent.parent / "a-file"
    not_a_folder.write_text("x")
    monkeypatch.setenv(integrity.CACHE_ENV, str(not_a_folder))
    for args in (["cache"], ["cache", "--clear"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1 and "is a file, so nothing is cached" in result.output
    assert not_a_folder.read_text() == "x"
