"""Fingerprint, contract names, bundle manifest and atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bitfit_deploy._io import atomic_dir, atomic_file
from bitfit_deploy.contract import graph_bias_names, is_bias
from bitfit_deploy.errors import BundleError, OutputExistsError
from bitfit_deploy.fingerprint import fingerprint
from bitfit_deploy.manifest import MANIFEST_FILE, BiasInput, Manifest, read_manifest, sha256_file


def test_fingerprint_is_order_free_and_sensitive():
    a, b = np.arange(4, dtype=np.float32), np.ones((2, 2), np.float32)
    fp = fingerprint([("a", a), ("b", b)])
    assert fp == fingerprint([("b", b), ("a", a)])
    assert fp.startswith("sha256:") and len(fp) == 7 + 64
    b2 = b.copy()
    b2[0, 0] = np.nextafter(np.float32(1), np.float32(2))
    assert fingerprint([("a", a), ("b", b2)]) != fp
    assert fingerprint([("a", a), ("c", b)]) != fp  # names count
    assert fingerprint([("a", a), ("b", b.reshape(4))]) != fp  # shapes count


def test_graph_bias_names():
    names = [
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
        "encoder.layer.0.q.bias",
        "pooler.dense.weight",
        "pooler.dense.bias",
    ]
    assert graph_bias_names(names, "mean") == [
        "embeddings.LayerNorm.bias",
        "encoder.layer.0.q.bias",
    ]
    assert graph_bias_names(names, "pooler")[-1] == "pooler.dense.bias"
    assert is_bias("bias") and not is_bias("x.biased")
    with pytest.raises(ValueError, match="unknown pooling"):
        graph_bias_names(names, "max")


def _manifest() -> Manifest:
    return Manifest(
        base_fingerprint="sha256:x",
        architecture="bert",
        pooling="mean",
        max_length=16,
        hidden_size=4,
        text_inputs=["input_ids", "attention_mask"],
        bias_inputs=[BiasInput("a.bias", 4)],
        variants={"fp32": "model.onnx"},
    )


def test_manifest_round_trip_and_checksums(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"graph")
    m = _manifest()
    m.files = {"model.onnx": sha256_file(tmp_path / "model.onnx")}
    (tmp_path / MANIFEST_FILE).write_text(m.to_json())
    assert read_manifest(tmp_path) == m
    (tmp_path / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="does not match the sha256"):
        read_manifest(tmp_path)
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(BundleError, match="lacks model.onnx"):
        read_manifest(tmp_path)


def test_manifest_errors(tmp_path):
    with pytest.raises(BundleError, match="not an export bundle"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(tmp_path)
    data = json.loads(_manifest().to_json())
    del data["pooling"]
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="lacks the keys"):
        read_manifest(tmp_path)
    data["format"] = "other"
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="not a bitfit-deploy bundle"):
        read_manifest(tmp_path)


def test_atomic_file_keeps_old_content_on_failure(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(path, force=True) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "bundle"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(OutputExistsError, match="--force"), atomic_dir(out):
        pass
    with pytest.raises(RuntimeError), atomic_dir(out, force=True) as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    with atomic_dir(out, force=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    """mkstemp/mkdtemp make private files; outputs must be readable as a plain write would be."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "f.bin") as tmp:
            tmp.write_bytes(b"x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "a").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
