"""Bundle integrity: only loaded files are hashed, markers skip unchanged files, tampering is caught."""

from __future__ import annotations

import os
import shutil

import pytest
from click.testing import CliRunner
from runtime_fixtures import SENTENCES, synthetic_delta

from bitfit_deploy import integrity
from bitfit_deploy.cli import cli
from bitfit_deploy.delta import save_delta
from bitfit_deploy.errors import BundleError, InvalidInputError
from bitfit_deploy.integrity import verify_bundle
from bitfit_deploy.manifest import read_manifest
from bitfit_deploy.runtime import Runtime

TASK = "tasks/mood.safetensors"
FP32 = ["model.onnx", "model.onnx.data", "tokenizer.json", "base.safetensors", TASK]


@pytest.fixture(scope="module")
def exported(tiny_bert, tmp_path_factory):
    """A tiny bundle with fp32 and int8 graphs and one shipped task."""
    from bitfit_deploy.exporters.bundle import export_bundle

    root = tmp_path_factory.mktemp("integrity")
    export_bundle(root / "plain", model=str(tiny_bert))
    delta = save_delta(
        synthetic_delta(read_manifest(root / "plain"), "mood", seed=4), root / "mood.safetensors"
    )
    export_bundle(root / "b", model=str(tiny_bert), tasks=[delta], quantize="int8")
    return root / "b"


@pytest.fixture
def bundle(exported, tmp_path, monkeypatch):
    """A fresh copy of the bundle, its own marker folder, and markers for files however recent."""
    monkeypatch.setenv(integrity.CACHE_ENV, str(tmp_path / "markers"))
    monkeypatch.setattr(integrity, "RACY_SECONDS", 0.0)
    return shutil.copytree(exported, tmp_path / "b")


def _rewrite_same_size(path, keep_mtime: bool = True) -> None:
    """Change one byte in the middle of `path`, keeping its size (and, by default, its mtime)."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert after.st_size == before.st_size
    assert not keep_mtime or after.st_mtime_ns == before.st_mtime_ns


def test_graph_weights_live_beside_the_graph_and_are_checked_with_it(bundle):
    manifest = read_manifest(bundle, verify=False)
    assert manifest.weights == {"fp32": "model.onnx.data", "int8": "model.int8.onnx.data"}
    assert (bundle / "model.onnx.data").stat().st_size > 10 * (bundle / "model.onnx").stat().st_size
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.onnx.data", "base.safetensors"):  # their writers create files 0600
        assert (bundle / name).stat().st_mode & 0o777 == 0o666 & ~umask
    _rewrite_same_size(bundle / "model.onnx.data")
    assert Runtime(bundle, threads=1, variant="int8").predict("mood", SENTENCES[:1])
    with pytest.raises(BundleError, match=r"model\.onnx\.data does not match"):
        Runtime(bundle, threads=1)


def test_fp32_opens_despite_a_corrupt_int8_graph_and_int8_is_refused(bundle):
    _rewrite_same_size(bundle / "model.int8.onnx")
    rt = Runtime(bundle, threads=1)
    assert rt.predict("mood", SENTENCES[:1])[0].label in {"negative", "positive"}
    with pytest.raises(BundleError, match=r"model\.int8\.onnx does not match the sha256"):
        Runtime(bundle, variant="int8", threads=1)
    with pytest.raises(BundleError, match=r"model\.int8\.onnx does not match"):
        Runtime(bundle, threads=1, verify="full")


def test_only_loaded_files_are_hashed_and_markers_skip_them_next_time(bundle):
    manifest = read_manifest(bundle, verify=False)
    assert verify_bundle(bundle, manifest, "fp32") == FP32
    assert verify_bundle(bundle, manifest, "fp32") == []
    assert verify_bundle(bundle, manifest, "int8") == ["model.int8.onnx", "model.int8.onnx.data"]
    assert verify_bundle(bundle, manifest, "fp32", tasks=False) == []
    assert verify_bundle(bundle, manifest, "fp32", verify="loaded") == FP32
    assert sorted(verify_bundle(bundle, manifest, "fp32", verify="full")) == sorted(manifest.files)


@pytest.mark.parametrize("name", FP32)
def test_same_size_rewrite_with_mtime_put_back_is_caught_after_a_marker(bundle, name):
    Runtime(bundle, threads=1)  # writes the markers
    assert verify_bundle(bundle, read_manifest(bundle, verify=False), "fp32") == []
    _rewrite_same_size(bundle / name)
    with pytest.raises(BundleError, match="does not match the sha256"):
        Runtime(bundle, threads=1)


@pytest.mark.parametrize("verify", ["cached", "loaded", "full"])
def test_tampered_loaded_file_is_refused_in_every_mode(bundle, verify):
    _rewrite_same_size(bundle / "tokenizer.json", keep_mtime=False)
    with pytest.raises(BundleError, match=r"tokenizer\.json does not match"):
        Runtime(bundle, threads=1, verify=verify)


def test_a_replaced_file_is_hashed_again(bundle):
    manifest = read_manifest(bundle, verify=False)
    verify_bundle(bundle, manifest, "fp32")
    copy = bundle / "base.copy"
    shutil.copy2(bundle / "base.safetensors", copy)
    os.replace(copy, bundle / "base.safetensors")  # same bytes and mtime, new inode
    assert verify_bundle(bundle, manifest, "fp32") == ["base.safetensors"]


def test_full_and_loaded_trust_no_marker(bundle):
    """What a marker cannot see (e.g. corruption below the file system), full verification can."""
    manifest = read_manifest(bundle, verify=False)
    verify_bundle(bundle, manifest, "fp32")
    path = bundle / "tokenizer.json"
    _rewrite_same_size(path)
    key = {**integrity._stat_key(path), "sha256": manifest.files["tokenizer.json"]}
    integrity._write_marker(integrity.marker_dir(), path, key)  # as if the change were invisible
    assert verify_bundle(bundle, manifest, "fp32") == []
    for verify in ("loaded", "full"):
        with pytest.raises(BundleError, match=r"tokenizer\.json does not match"):
            verify_bundle(bundle, manifest, "fp32", verify=verify)


def test_tasks_that_are_not_loaded_are_not_checked(bundle):
    _rewrite_same_size(bundle / TASK)
    assert Runtime(bundle, threads=1, load_bundle_tasks=False).tasks == {}
    with pytest.raises(BundleError, match=r"mood\.safetensors does not match"):
        Runtime(bundle, threads=1)


def test_missing_files(bundle):
    (bundle / "model.int8.onnx").unlink()
    assert Runtime(bundle, threads=1).tasks.keys() == {"mood"}
    with pytest.raises(BundleError, match=r"lacks model\.int8\.onnx"):
        Runtime(bundle, threads=1, variant="int8")
    (bundle / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"lacks tokenizer\.json; export it again"):
        Runtime(bundle, threads=1)


def test_recent_files_get_no_marker(bundle, monkeypatch):
    monkeypatch.setattr(integrity, "RACY_SECONDS", 3600.0)
    manifest = read_manifest(bundle, verify=False)
    assert verify_bundle(bundle, manifest, "fp32") == FP32
    assert verify_bundle(bundle, manifest, "fp32") == FP32


@pytest.mark.parametrize("cache", ["", "a-file"])
def test_no_marker_folder_still_verifies(bundle, tmp_path, monkeypatch, cache):
    if cache:
        (tmp_path / cache).write_text("not a folder")
        cache = str(tmp_path / cache)
    monkeypatch.setenv(integrity.CACHE_ENV, cache)
    manifest = read_manifest(bundle, verify=False)
    assert verify_bundle(bundle, manifest, "fp32") == FP32
    assert verify_bundle(bundle, manifest, "fp32") == FP32
    assert Runtime(bundle, threads=1).tasks.keys() == {"mood"}


def test_unknown_verify_mode(bundle):
    with pytest.raises(InvalidInputError, match="choose one of cached, loaded, full"):
        Runtime(bundle, verify="none")


def test_verify_command_hashes_every_file_and_refreshes_markers(bundle):
    result = CliRunner().invoke(cli, ["verify", str(bundle)])
    assert result.exit_code == 0, result.output
    files = read_manifest(bundle, verify=False).files
    assert f"all {len(files)} files" in result.output
    assert verify_bundle(bundle, read_manifest(bundle, verify=False), "int8") == []
    _rewrite_same_size(bundle / "base.safetensors")
    failed = CliRunner().invoke(cli, ["verify", str(bundle)])
    assert (
        failed.exit_code == 1
        and "BundleError" in failed.output
        and "base.safetensors" in failed.output
    )


def test_markers_of_deleted_files_are_swept(bundle, tmp_path, monkeypatch):
    gone = shutil.copytree(bundle, tmp_path / "temp-bundle")
    verify_bundle(gone, read_manifest(gone, verify=False), "fp32")
    markers = integrity.marker_dir()
    swept = {integrity._marker_path(markers, gone / rel) for rel in FP32}
    assert all(m.is_file() for m in swept)
    shutil.rmtree(gone)
    monkeypatch.setattr(integrity, "PRUNE_ABOVE", 2)
    monkeypatch.setattr(integrity, "_pruned", False)  # once a process, past PRUNE_ABOVE
    verify_bundle(bundle, read_manifest(bundle, verify=False), "fp32")  # writes, then sweeps
    assert not any(m.exists() for m in swept)
    assert verify_bundle(bundle, read_manifest(bundle, verify=False), "fp32") == []
