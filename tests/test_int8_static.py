"""Static int8: calibration at export, smoothing, the range probe and its warnings, the options."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from runtime_fixtures import SENTENCES, synthetic_delta

from bitfit_deploy.cli import main
from bitfit_deploy.delta import save_delta
from bitfit_deploy.errors import DataError, ExportOptionError
from bitfit_deploy.exporters.bundle import export_bundle
from bitfit_deploy.exporters.calibrate import read_calibration_texts
from bitfit_deploy.exporters.quantize import (
    SMOOTH_SPREAD,
    frozen_matmul_inputs,
    quantize_matmuls_static,
    smoothing_factors,
)
from bitfit_deploy.manifest import INT8_CALIBRATION_FILE, INT8_PROBE_FILE, read_manifest
from bitfit_deploy.runtime import Runtime
from bitfit_deploy.runtime.int8_ranges import CLIPPED_WARNING


@pytest.fixture(scope="module")
def bundle(tiny_int8_bundle):
    return tiny_int8_bundle


_FILES = itertools.count()


def _load(rt: Runtime, delta, folder, name: str | None = None, replace: bool = False) -> str:
    """Load `delta` through a file of its own, as users do."""
    path = save_delta(delta, folder / f"{delta.metadata.task}-{next(_FILES)}.safetensors")
    return rt.load_task(path, name=name, replace=replace)


def _clipped(rt: Runtime, name: str) -> float | None:
    assert rt.wait_for_int8_checks(timeout=60)
    return rt.tasks[name].int8_clipped


def _loud(manifest, name: str, scale: float, seed: int = 3):
    """A delta whose biases are `scale` times a random one: activations far past the base's."""
    delta = synthetic_delta(manifest, name, seed=seed)
    return dataclasses.replace(delta, biases={k: v * scale for k, v in delta.biases.items()})


def test_manifest_records_the_calibration_and_the_probe(bundle):
    manifest = read_manifest(bundle)  # verify=True: the probe files are hashed like the rest
    spec = manifest.quantization["int8"]
    assert spec["activations"] == "static"
    assert spec["calibration"]["texts"] == len(read_calibration_texts().items) >= 200
    assert spec["calibration"]["tasks"] == []
    assert spec["probe"] == INT8_PROBE_FILE and spec["calibration_inputs"] == INT8_CALIBRATION_FILE
    assert {INT8_PROBE_FILE, INT8_CALIBRATION_FILE} <= set(manifest.files)
    assert all(v > 0 for v in spec["clip"].values())
    # the probe reuses the int8 graph's weights file instead of carrying its own
    assert (bundle / INT8_PROBE_FILE).stat().st_size < 0.2 * (
        bundle / "model.int8.onnx.data"
    ).stat().st_size


def test_static_int8_stays_close_to_fp32(bundle, tmp_path):
    fp32, int8 = (Runtime(bundle, variant=v, threads=1) for v in ("fp32", "int8"))
    delta = synthetic_delta(read_manifest(bundle), "mild", seed=1)
    delta = dataclasses.replace(delta, biases={k: v * 0.1 for k, v in delta.biases.items()})
    for rt in (fp32, int8):
        _load(rt, delta, tmp_path)
    want = np.array([list(p.scores.values()) for p in fp32.predict("mild", SENTENCES)])
    got = np.array([list(p.scores.values()) for p in int8.predict("mild", SENTENCES)])
    np.testing.assert_allclose(got, want, atol=0.05)
    assert not np.array_equal(got, want)  # really the quantized graph


def test_probe_measures_clipping_and_warns_for_a_task_past_the_calibration(
    bundle, tmp_path, caplog
):
    manifest = read_manifest(bundle)
    rt = Runtime(bundle, variant="int8", threads=1)
    with caplog.at_level(logging.WARNING, logger="bitfit_deploy.runtime"):
        _load(rt, _loud(manifest, "quiet", 0.01), tmp_path)
        assert _clipped(rt, "quiet") <= CLIPPED_WARNING and not caplog.records
        _load(rt, _loud(manifest, "loud", 20.0), tmp_path)
        assert _clipped(rt, "loud") > CLIPPED_WARNING
    assert "'loud' clips" in caplog.text and "--variant int8" in caplog.text
    assert rt.predict("loud", SENTENCES[:1])[0].task == "loud"


def test_checks_run_in_the_background_in_batches_and_follow_replacements(bundle, tmp_path):
    manifest = read_manifest(bundle)
    rt = Runtime(bundle, variant="int8", threads=1)
    names = [_load(rt, _loud(manifest, f"t{i}", 0.01, seed=i), tmp_path) for i in range(40)]
    assert rt.predict_mixed([(n, "good") for n in names[:3]])  # serving does not wait
    # replaced at once: the loud task's check must not land on the quiet task that replaced it
    _load(rt, _loud(manifest, "swap", 20.0), tmp_path)
    _load(rt, _loud(manifest, "swap", 0.01), tmp_path, replace=True)
    assert rt.wait_for_int8_checks(timeout=60)
    assert all(rt.tasks[n].int8_clipped is not None for n in names)
    assert rt.tasks["swap"].int8_clipped <= CLIPPED_WARNING


def test_calibration_covers_the_tasks_exported_with_the_bundle(tiny_bert, bundle, tmp_path):
    """The same loud task clips a lot on a bundle calibrated without it, little on one with it."""
    manifest = read_manifest(bundle)
    path = save_delta(_loud(manifest, "loud", 20.0), tmp_path / "loud.safetensors")
    export_bundle(
        tmp_path / "with", model=str(tiny_bert), tasks=[path], quantize="int8", progress=False
    )
    assert read_manifest(tmp_path / "with").quantization["int8"]["calibration"]["tasks"] == ["loud"]
    covered = _clipped(Runtime(tmp_path / "with", variant="int8", threads=1), "loud")
    rt = Runtime(bundle, variant="int8", threads=1)
    rt.load_task(path)
    uncovered = _clipped(rt, "loud")
    assert uncovered > CLIPPED_WARNING and uncovered > 5 * covered


def test_no_probe_on_fp32_when_switched_off_or_per_token(tiny_bert, bundle, tmp_path):
    manifest = read_manifest(bundle)
    delta = _loud(manifest, "loud", 20.0)
    for rt in (
        Runtime(bundle, variant="fp32", threads=1),
        Runtime(bundle, variant="int8", threads=1, check_int8_ranges=False),
    ):
        _load(rt, delta, tmp_path)
        assert _clipped(rt, "loud") is None
    export_bundle(
        tmp_path / "pt",
        model=str(tiny_bert),
        quantize="int8",
        int8_activations="per-token",
    )
    per_token = read_manifest(tmp_path / "pt")
    assert per_token.quantization == {"int8": {"activations": "per-token"}}
    assert not (tmp_path / "pt" / INT8_PROBE_FILE).exists()
    rt = Runtime(tmp_path / "pt", variant="int8", threads=1)
    _load(rt, delta, tmp_path)
    assert _clipped(rt, "loud") is None


def test_a_tampered_probe_is_reported_and_serving_goes_on(bundle, tmp_path, caplog):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / INT8_CALIBRATION_FILE).read_bytes())
    data[-1] ^= 1
    (copy / INT8_CALIBRATION_FILE).write_bytes(bytes(data))
    rt = Runtime(copy, variant="int8", threads=1)  # the probe's files are checked when it opens
    with caplog.at_level(logging.ERROR, logger="bitfit_deploy.runtime"):
        _load(rt, synthetic_delta(read_manifest(copy, verify=False), "t"), tmp_path)
        assert _clipped(rt, "t") is None
    assert "int8 range check of 't' failed" in caplog.text and INT8_CALIBRATION_FILE in caplog.text
    assert rt.predict("t", SENTENCES[:1])[0].task == "t"


def test_calibration_file_is_read_and_recorded(tiny_bert, tmp_path):
    texts = tmp_path / "mine.txt"
    lines = [*SENTENCES, "", *SENTENCES, "a question ?\tan answer ."]
    texts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    calibration = read_calibration_texts(texts)
    assert calibration.items[-1] == ("a question ?", "an answer .")
    assert len(calibration.items) == 2 * len(SENTENCES) + 1  # the empty line is skipped
    manifest = export_bundle(
        tmp_path / "b", model=str(tiny_bert), quantize="int8", calibration=texts, progress=False
    )
    assert manifest.quantization["int8"]["calibration"]["source"] == str(texts)
    assert manifest.quantization["int8"]["calibration"]["texts"] == 2 * len(SENTENCES) + 1


_line = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\t"), min_size=1
).filter(str.strip)


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.one_of(_line, st.tuples(_line, _line)), min_size=8, max_size=30),
    crlf=st.booleans(),
)
def test_calibration_files_read_back_as_written(tmp_path_factory, texts, crlf):
    """Any text (Unicode line separators, form feeds, ...) and pair comes back as written."""
    path = tmp_path_factory.mktemp("cal") / "texts.txt"
    lines = [x if isinstance(x, str) else "\t".join(x) for x in texts]
    path.write_bytes(("\r\n" if crlf else "\n").join(lines).encode("utf-8"))
    assert read_calibration_texts(path).items == [
        x if isinstance(x, str) else tuple(x) for x in texts
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"caf\xe9 au lait\n" * 10, "not UTF-8"),
        (b"one\ntwo\n", "has 2 non-empty lines"),
        (b"a\tb\tc\n" * 10, "3 tab-separated fields"),
    ],
)
def test_bad_calibration_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "cal.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_calibration_texts(path)


def test_export_options_are_checked_before_the_slow_part(tiny_bert, tmp_path):
    with pytest.raises(ExportOptionError, match="only to static int8"):
        export_bundle(tmp_path / "a", model=str(tiny_bert), calibration=tmp_path / "x.txt")
    with pytest.raises(ExportOptionError, match="unknown int8 activation scheme"):
        export_bundle(tmp_path / "a", model=str(tiny_bert), quantize="int8", int8_activations="x")
    assert not (tmp_path / "a").exists()


def test_cli_exports_per_token_and_custom_calibration(tiny_bert, tmp_path, capsys):
    texts = tmp_path / "mine.txt"
    texts.write_text("\n".join(SENTENCES * 2), encoding="utf-8")
    base = ["export", "--onnx", "--model", str(tiny_bert), "--quantize", "int8"]
    for extra in (
        ["-o", str(tmp_path / "s"), "--calibration", str(texts)],
        ["-o", str(tmp_path / "p"), "--int8-activations", "per-token"],
    ):
        with pytest.raises(SystemExit) as info:
            main([*base, *extra])
        assert info.value.code == 0
    assert read_manifest(tmp_path / "s").quantization["int8"]["calibration"]["texts"] == 12
    out = capsys.readouterr().out
    assert f"calibrated on 12 texts ({texts})" in out and out.count("int8: static") == 1
    assert read_manifest(tmp_path / "p").quantization["int8"]["activations"] == "per-token"


def _one_matmul_graph(weight: np.ndarray, with_bias_path: bool = False) -> onnx.ModelProto:
    """x (a text-derived float input, named input_ids) @ W; optionally a bias row @ W too."""
    k, n = weight.shape
    nodes = [helper.make_node("MatMul", ["input_ids", "W"], ["y"])]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, ["rows", k])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])]
    if with_bias_path:
        nodes.append(helper.make_node("MatMul", ["bias_row", "W"], ["bias_out"]))
        inputs.append(helper.make_tensor_value_info("bias_row", TensorProto.FLOAT, ["rows", k]))
        outputs.append(helper.make_tensor_value_info("bias_out", TensorProto.FLOAT, ["rows", n]))
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(weight, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_matmuls_that_read_no_text_stay_float(tmp_path):
    weight = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    model = _one_matmul_graph(weight, with_bias_path=True)
    onnx.save(model, tmp_path / "g.onnx")
    assert frozen_matmul_inputs(tmp_path / "g.onnx") == ["input_ids"]
    quantize_matmuls_static(model, {"input_ids": np.ones(8, np.float32)})
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 1 and ops.count("MatMul") == 1


def test_smoothing_only_where_channels_stand_out():
    weights = [np.ones((6, 3), np.float32)]
    assert smoothing_factors(np.ones(6, np.float32) * 2, weights) is None
    spread = np.array([1, 1, 1, 1, 1, SMOOTH_SPREAD * 3], np.float32)
    c = smoothing_factors(spread, weights)
    assert c is not None and c.argmax() == 5


@settings(max_examples=30, deadline=None)
@given(
    k=st.integers(4, 48),
    n=st.integers(1, 16),
    outlier=st.floats(1.0, 60.0),
    seed=st.integers(0, 2**16),
)
def test_static_matmul_is_close_and_row_independent(k, n, outlier, seed):
    """Within the calibrated range: error under 3% of the output scale; each row as if alone."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(k, n)).astype(np.float32)
    x = rng.normal(size=(12, k)).astype(np.float32)
    x[:, rng.integers(k)] *= outlier  # an outlier channel, as LayerNorm outputs have
    model = _one_matmul_graph(weight)
    quantize_matmuls_static(model, {"input_ids": np.abs(x).max(axis=0)})
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(["y"], {"input_ids": x})[0]
    want = x @ weight
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max() + 1e-6
    for i in (0, 5, 11):
        alone = session.run(["y"], {"input_ids": x[i : i + 1]})[0][0]
        np.testing.assert_array_equal(alone, got[i])


def test_old_manifests_without_quantization_still_read(bundle, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(bundle, copy)
    data = json.loads((copy / "manifest.json").read_text())
    del data["quantization"]
    (copy / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(copy, verify=False).quantization == {}
    rt = Runtime(copy, variant="int8", threads=1)  # no probe: treated as before
    _load(rt, synthetic_delta(read_manifest(copy, verify=False), "t"), tmp_path)
    assert _clipped(rt, "t") is None


def test_server_shows_the_check_of_an_uploaded_task(bundle, tmp_path):
    import httpx
    from serve_helpers import serve

    from bitfit_deploy.runtime.server import create_app

    rt = Runtime(bundle, variant="int8", threads=1, spin_wait=False)
    data = save_delta(_loud(read_manifest(bundle), "loud", 20.0), tmp_path / "l.safetensors")
    headers = {"Authorization": "Bearer t0ken"}
    with serve(create_app(rt, admin_token="t0ken")) as base:
        put = httpx.put(f"{base}/v1/tasks/loud", content=data.read_bytes(), headers=headers)
        assert put.status_code in (200, 201), put.text
        assert rt.wait_for_int8_checks(timeout=60)
        info = httpx.get(f"{base}/v1/tasks/loud").json()
    assert info["int8_clipped"] > CLIPPED_WARNING


def test_a_process_exits_cleanly_with_checks_under_way(bundle, tmp_path):
    """Exit while the background thread is inside ONNX Runtime: SIGABRT every time before the fix."""
    import subprocess
    import sys

    manifest = read_manifest(bundle)
    paths = [
        save_delta(_loud(manifest, f"t{i}", 5.0, seed=i), tmp_path / f"t{i}.safetensors")
        for i in range(64)
    ]
    script = (
        "import sys\n"
        "from bitfit_deploy.runtime import Runtime\n"
        "rt = Runtime(sys.argv[1], variant='int8', threads=2)\n"
        "for p in sys.argv[2:]:\n"
        "    rt.load_task(p)\n"
        "print(rt.predict('t0', ['fine'])[0].task)\n"
    )
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", script, str(bundle), *map(str, paths)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "t0"


@pytest.mark.parametrize("arch", ["roberta", "distilbert"])
def test_static_int8_on_other_architectures(tiny_models, tmp_path, arch):
    """Calibration, smoothing and the probe work where there are no token_type_ids, too."""
    out = tmp_path / "b"
    manifest = export_bundle(out, model=str(tiny_models(arch)), quantize="int8", progress=False)
    assert manifest.text_inputs == ["input_ids", "attention_mask"]
    delta = synthetic_delta(manifest, "mild", seed=2)
    delta = dataclasses.replace(delta, biases={k: v * 0.1 for k, v in delta.biases.items()})
    fp32, int8 = (Runtime(out, variant=v, threads=1) for v in ("fp32", "int8"))
    for rt in (fp32, int8):
        _load(rt, delta, tmp_path)
    want = np.array([list(p.scores.values()) for p in fp32.predict("mild", SENTENCES)])
    got = np.array([list(p.scores.values()) for p in int8.predict("mild", SENTENCES)])
    np.testing.assert_allclose(got, want, atol=0.05)
    assert _clipped(int8, "mild") is not None  # the probe ran (tiny random models clip oddly)


def test_calibration_file_with_a_byte_order_mark_reads_its_first_text_whole(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeff".encode() + "\n".join(SENTENCES * 2).encode())
    assert read_calibration_texts(path).items[0] == SENTENCES[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_checks_its_tasks_though_the_parent_was_mid_check(bundle):
    """Fork while the parent's checker thread is inside a check: the child's own submit and wait
    still finish (the parent's lock and thread did not come along)."""
    import threading

    from runtime_fixtures import run_in_fork

    from bitfit_deploy.runtime.int8_ranges import RangeChecker

    parent, inside, release = os.getpid(), threading.Event(), threading.Event()

    class SlowInParentProbe:
        def __init__(self) -> None:
            self._lock = threading.Lock()

        def clipped(self, tasks):  # noqa: ANN001, ANN202
            with self._lock:
                if os.getpid() == parent:
                    inside.set()
                    release.wait(30)
                return [(0.0, "t")] * len(tasks)

        def after_fork(self) -> None:
            self._lock = threading.Lock()

        def release(self) -> None:
            pass

    seen: list[str] = []
    checker = RangeChecker(SlowInParentProbe(), lambda results: seen.extend(t for t, *_ in results))
    checker.submit("first")
    assert inside.wait(10)
    try:
        in_child = lambda: (checker.submit("second"), checker.wait(20))[1] and "second" in seen  # noqa: E731
        assert run_in_fork(in_child) == "ok"
    finally:
        release.set()
    assert checker.wait(20) and seen == ["first"]
