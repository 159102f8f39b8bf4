"""Runtime predictions against the PyTorch reference, mixed batches, truncation, I/O binding."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_fixtures import LONG_TEXT, PAIRS, SENTENCES, TASK_SPECS, write_task_deltas

from bitfit_deploy.delta import load_delta
from bitfit_deploy.runtime import Prediction, Runtime, TaskInfo


@pytest.fixture(scope="module")
def bundle(tiny_bert, tmp_path_factory):
    from bitfit_deploy.exporters.bundle import export_bundle

    out = tmp_path_factory.mktemp("rt") / "bundle"
    export_bundle(out, model=str(tiny_bert))
    return out


@pytest.fixture(scope="module")
def deltas(bundle, tmp_path_factory):
    from bitfit_deploy.manifest import read_manifest

    return write_task_deltas(read_manifest(bundle), tmp_path_factory.mktemp("deltas"))


@pytest.fixture(scope="module")
def runtime(bundle, deltas):
    rt = Runtime(bundle, threads=1, max_batch_size=4)
    for path in deltas.values():
        rt.load_task(path)
    return rt


def reference_logits(model_dir, delta_path, items, max_length):
    """PyTorch logits of base + delta, one input at a time (no padding)."""
    import torch
    from transformers import AutoTokenizer

    from bitfit_deploy.modeling import apply_delta, load_encoder

    encoder, _ = load_encoder(str(model_dir))
    model = apply_delta(encoder, load_delta(delta_path))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    out = []
    with torch.no_grad():
        for item in items:
            args = item if isinstance(item, tuple) else (item,)
            enc = tokenizer(*args, truncation=True, max_length=max_length, return_tensors="pt")
            out.append(model(**enc)["logits"][0].numpy())
    return np.stack(out)


def expected_scores(logits, problem_type):
    if problem_type == "regression":
        return logits[:, 0]
    if problem_type == "multi_label":
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def observed_scores(predictions, problem_type):
    if problem_type == "regression":
        return np.array([p.value for p in predictions])
    return np.array([list(p.scores.values()) for p in predictions])


@pytest.mark.parametrize("task", list(TASK_SPECS))
def test_predictions_equal_pytorch_reference(runtime, deltas, tiny_bert, task):
    items = [*SENTENCES, *PAIRS, LONG_TEXT]
    problem_type, labels = TASK_SPECS[task]
    predictions = runtime.predict(task, items)
    want = expected_scores(
        reference_logits(tiny_bert, deltas[task], items, runtime.manifest.max_length), problem_type
    )
    np.testing.assert_allclose(observed_scores(predictions, problem_type), want, atol=2e-5)
    assert all(isinstance(p, Prediction) and p.task == task for p in predictions)
    if problem_type == "single_label":
        for p, row in zip(predictions, want, strict=True):
            assert p.label == labels[int(row.argmax())] and p.predicted_labels == [p.label]
            assert p.score == pytest.approx(row.max()) and p.value is None
    elif problem_type == "multi_label":
        for p, row in zip(predictions, want, strict=True):
            assert p.predicted_labels == [
                lab for lab, s in zip(labels, row, strict=True) if s >= 0.5
            ]
            assert p.label == labels[int(row.argmax())]
    else:
        assert all(p.label is None and p.scores == {} and p.score == p.value for p in predictions)


def test_truncation_is_flagged_per_row(runtime):
    out = runtime.predict("sentiment", ["short text", LONG_TEXT, ("short", LONG_TEXT)])
    assert [p.truncated for p in out] == [False, True, True]
    assert out[0].to_dict()["truncated"] is False


def test_mixed_batches_equal_single_task_runs(runtime):
    requests = [
        (task, item)
        for i, item in enumerate([*SENTENCES, *PAIRS] * 2)
        for task in [list(TASK_SPECS)[i % len(TASK_SPECS)]]
    ]
    mixed = runtime.predict_mixed(requests)
    assert [p.task for p in mixed] == [t for t, _ in requests]
    for (task, item), got in zip(requests, mixed, strict=True):
        alone = runtime.predict(task, [item])[0]
        assert got.label == alone.label
        assert got.score == pytest.approx(alone.score, abs=1e-5)
        for label, score in alone.scores.items():
            assert got.scores[label] == pytest.approx(score, abs=1e-5)


def test_padding_in_a_batch_does_not_change_results(runtime):
    alone = [runtime.predict("four", [s])[0] for s in SENTENCES]
    together = runtime.predict("four", SENTENCES)
    for a, b in zip(alone, together, strict=True):
        assert a.scores == pytest.approx(b.scores, abs=1e-5)


def test_tasks_snapshot_describes_loaded_tasks(runtime):
    tasks = runtime.tasks
    assert set(tasks) == set(TASK_SPECS)
    info = tasks["topics"]
    assert isinstance(info, TaskInfo)
    assert (info.labels, info.problem_type, info.num_labels) == (
        ["art", "sport", "money"],
        "multi_label",
        3,
    )
    assert info.pooling == runtime.manifest.pooling
    tasks.pop("topics")
    assert "topics" in runtime.tasks


def test_io_binding_path_on_cpu_equals_plain_path(bundle, deltas, runtime):
    bound = Runtime(bundle, threads=1, max_batch_size=3, io_binding=True)
    for path in deltas.values():
        bound.load_task(path)
    requests = [(task, item) for task in TASK_SPECS for item in [*SENTENCES[:3], PAIRS[0]]]
    for a, b in zip(bound.predict_mixed(requests), runtime.predict_mixed(requests), strict=True):
        assert (a.task, a.label, a.truncated) == (b.task, b.label, b.truncated)
        assert a.score == pytest.approx(b.score, abs=1e-5)
    bound.unload_task("four")
    assert bound.predict("sentiment", SENTENCES[:1])[0].score == pytest.approx(
        runtime.predict("sentiment", SENTENCES[:1])[0].score, abs=1e-5
    )


def test_bundle_tasks_are_loaded(tiny_bert, deltas, tmp_path):
    from bitfit_deploy.exporters.bundle import export_bundle

    export_bundle(tmp_path / "b", model=str(tiny_bert), tasks=[deltas["sentiment"]])
    assert set(Runtime(tmp_path / "b").tasks) == {"sentiment"}
    assert Runtime(tmp_path / "b", load_bundle_tasks=False).tasks == {}


def _cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_available(), reason="needs onnxruntime-gpu and a CUDA device")
def test_cuda_equals_cpu(bundle, deltas, runtime):
    gpu = Runtime(bundle, provider="cuda", max_batch_size=4)
    for path in deltas.values():
        gpu.load_task(path)
    requests = [(task, item) for task in TASK_SPECS for item in [*SENTENCES, *PAIRS]]
    for a, b in zip(gpu.predict_mixed(requests), runtime.predict_mixed(requests), strict=True):
        assert a.label == b.label
        assert a.score == pytest.approx(b.score, abs=1e-4)
    gpu.unload_task("four")
    gpu.load_task(deltas["four"], name="again")
    assert (
        gpu.predict("again", SENTENCES[:2])[0].label
        == runtime.predict("four", SENTENCES[:2])[0].label
    )


def test_int8_variant_is_close_to_fp32(tiny_bert, deltas, tmp_path):
    from bitfit_deploy.exporters.bundle import export_bundle

    export_bundle(tmp_path / "b", model=str(tiny_bert), quantize="int8")
    fp32, int8 = (Runtime(tmp_path / "b", variant=v, threads=1) for v in ("fp32", "int8"))
    for rt in (fp32, int8):
        rt.load_task(deltas["four"])
    a, b = fp32.predict("four", SENTENCES), int8.predict("four", SENTENCES)
    got = np.array([list(p.scores.values()) for p in b])
    want = np.array([list(p.scores.values()) for p in a])
    np.testing.assert_allclose(got, want, atol=0.05)
    assert not np.array_equal(got, want)  # really the quantized graph


@pytest.mark.slow
def test_packaged_minilm_equals_pytorch_reference(tmp_path):
    from runtime_fixtures import synthetic_delta

    from bitfit_deploy.delta import save_delta
    from bitfit_deploy.exporters.bundle import export_bundle
    from bitfit_deploy.modeling import default_model_path

    manifest = export_bundle(tmp_path / "b")
    path = save_delta(synthetic_delta(manifest, "mini", seed=4), tmp_path / "mini.safetensors")
    rt = Runtime(tmp_path / "b", threads=2)
    rt.load_task(path)
    items = [*SENTENCES, *PAIRS]
    got = observed_scores(rt.predict("mini", items), "single_label")
    want = expected_scores(
        reference_logits(default_model_path(), path, items, manifest.max_length), "single_label"
    )
    np.testing.assert_allclose(got, want, atol=2e-5)
