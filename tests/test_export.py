"""export_bundle and `bitfit-deploy export --onnx`: layout, manifest, variants, baked graphs, errors, atomicity."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from export_helpers import TEXTS, graph_feeds, reference, run, session, tokenize, write_deltas
from hypothesis import given, settings
from hypothesis import strategies as st
from odd_values import ODD_VALUES
from safetensors.numpy import load_file

from bitfit_deploy import modeling
from bitfit_deploy.cli import main
from bitfit_deploy.delta import load_delta, save_delta
from bitfit_deploy.errors import (
    DeltaFormatError,
    ExportOptionError,
    FingerprintMismatchError,
    IncompatibleTaskError,
    ModelError,
    NoBiasError,
    OutputExistsError,
    UnsupportedArchitectureError,
)
from bitfit_deploy.exporters import bundle as bundle_module
from bitfit_deploy.exporters import export_bundle
from bitfit_deploy.manifest import read_manifest, sha256_file


@pytest.fixture(scope="module")
def deltas(tiny_models, tmp_path_factory):
    """Three random tasks (2, 3, 5 labels) on the tiny BERT, saved as delta files."""
    encoder, _ = modeling.load_encoder(str(tiny_models("bert")))
    return encoder, write_deltas(encoder, tmp_path_factory.mktemp("deltas"))


@pytest.fixture(scope="module")
def tiny_bert_dir(tiny_models) -> str:
    return str(tiny_models("bert"))


@pytest.fixture(scope="module")
def bundle(tiny_models, deltas, tmp_path_factory):
    """One full bundle: three tasks, int8 variant, task1 baked."""
    out = tmp_path_factory.mktemp("bundles") / "bundle"
    manifest = export_bundle(
        out,
        model=str(tiny_models("bert")),
        tasks=[p for p, _ in deltas[1]],
        quantize="int8",
        bake=["task1"],
    )
    return out, manifest


def test_bundle_layout_and_manifest(bundle, deltas):
    out, manifest = bundle
    assert read_manifest(out) == manifest  # verify=True checks every sha256
    assert manifest.variants == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert manifest.baked == {"task1": "baked/task1.onnx"}
    assert manifest.tasks == [
        "tasks/task0.safetensors",
        "tasks/task1.safetensors",
        "tasks/task2.safetensors",
    ]
    assert manifest.base_fingerprint == modeling.base_fingerprint(deltas[0])
    assert (
        manifest.architecture == "bert"
        and manifest.hidden_size == 32
        and manifest.pooling == "mean"
    )
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest.files) == on_disk
    assert {
        "model.onnx",
        "model.int8.onnx",
        "baked/task1.onnx",
        "base.safetensors",
        "tokenizer.json",
    } <= on_disk
    assert all(sha256_file(out / rel) == digest for rel, digest in manifest.files.items())
    for path, _ in deltas[1]:
        assert (out / "tasks" / path.name).read_bytes() == path.read_bytes()
    assert not list(out.parent.glob(".*"))  # no temp folders left beside it


def test_bundle_graph_matches_pytorch_per_task_and_variant(bundle, deltas, tiny_models):
    out, manifest = bundle
    encoder, tasks = deltas
    base = load_file(str(out / "base.safetensors"))
    assert set(base) == {b.name for b in manifest.bias_inputs}
    text = tokenize(out, TEXTS, manifest.text_inputs)
    fp32, int8 = session(out / "model.onnx"), session(out / "model.int8.onnx")
    for _, delta in tasks:
        feeds = graph_feeds(text, base, [delta] * len(TEXTS))
        want = reference(encoder, delta, text)
        assert np.abs(run(fp32, feeds) - want).max() < 1e-4
        assert np.abs(run(int8, feeds) - want).max() <= 0.05 * np.abs(want).max()  # see test_graph
    baked = run(session(out / "baked/task1.onnx"), text)
    assert np.abs(baked - reference(encoder, tasks[1][1], text)).max() < 1e-4


def test_existing_output_needs_force_and_force_replaces(tiny_models, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="--force"):
        export_bundle(out, model=str(tiny_models("bert")))
    assert (out / "stale.txt").exists()
    export_bundle(out, model=str(tiny_models("bert")), force=True)
    assert not (out / "stale.txt").exists() and read_manifest(out).variants == {
        "fp32": "model.onnx"
    }


def test_failed_export_leaves_nothing(tiny_models, deltas, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundle_module, "write_manifest", boom)  # the very last step
    with pytest.raises(RuntimeError, match="disk full"):
        export_bundle(
            tmp_path / "new",
            model=str(tiny_models("bert")),
            tasks=[deltas[1][0][0]],
            quantize="int8",
        )
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("previous bundle")
    with pytest.raises(RuntimeError, match="disk full"):
        export_bundle(old, model=str(tiny_models("bert")), force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"] and (
        old / "keep.txt"
    ).read_text() == "previous bundle"


def test_wrong_fingerprint_names_both(tiny_models, tmp_path):
    other, _ = modeling.load_encoder(str(tiny_models("roberta")))
    delta = load_delta(write_deltas(other, tmp_path, labels=(2,))[0][0])
    delta.metadata.base_fingerprint = "sha256:" + "ab" * 32
    path = save_delta(delta, tmp_path / "foreign.safetensors")
    bert, _ = modeling.load_encoder(str(tiny_models("bert")))
    ours = modeling.base_fingerprint(bert)
    with pytest.raises(FingerprintMismatchError) as info:
        export_bundle(tmp_path / "out", model=str(tiny_models("bert")), tasks=[path])
    assert delta.metadata.base_fingerprint in str(info.value) and ours in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content", [b"", b"not a safetensors file at all", b"\x08" + b"\x00" * 7 + b"{"]
)
def test_unreadable_delta(tiny_models, tmp_path, content):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    with pytest.raises(DeltaFormatError, match="bad.safetensors"):
        export_bundle(tmp_path / "out", model=str(tiny_models("bert")), tasks=[bad])
    assert not (tmp_path / "out").exists()


def test_truncated_delta(tiny_models, deltas, tmp_path):
    data = deltas[1][0][0].read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DeltaFormatError, match="truncated"):
        export_bundle(tmp_path / "out", model=str(tiny_models("bert")), tasks=[bad])


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(
        GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=64, n_positions=32)
    ).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(
        UnsupportedArchitectureError, match="'gpt2'.*bert, roberta, xlm-roberta, distilbert"
    ):
        export_bundle(tmp_path / "out", model=str(tmp_path / "gpt2"))


def test_model_without_biases(tmp_path, monkeypatch):
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
    )
    LlamaModel(config).save_pretrained(tmp_path / "llama")
    # Let it past the architecture gate, to reach the bias check that any bias-free model meets.
    monkeypatch.setattr(
        modeling, "SUPPORTED_ARCHITECTURES", (*modeling.SUPPORTED_ARCHITECTURES, "llama")
    )
    with pytest.raises(NoBiasError, match="no bias terms"):
        export_bundle(tmp_path / "out", model=str(tmp_path / "llama"))


def test_bad_options(tiny_models, deltas, tmp_path):
    with pytest.raises(ExportOptionError, match="int4"):
        export_bundle(tmp_path / "a", model=str(tiny_models("bert")), quantize="int4")
    with pytest.raises(ExportOptionError, match="--bake 'nope'.*task0"):
        export_bundle(
            tmp_path / "b", model=str(tiny_models("bert")), tasks=[deltas[1][0][0]], bake=["nope"]
        )
    for bad in (100_000, 129, 4, 1, 0, -3):  # BERT: [CLS] a [SEP] b [SEP] needs at least 5
        with pytest.raises(
            ExportOptionError, match=f"--max-length {bad} must be between 5 and 128"
        ):
            export_bundle(tmp_path / "c", model=str(tiny_models("bert")), max_length=bad)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("arch", ["roberta", "distilbert"])
def test_other_architectures_bundle(tiny_models, tmp_path, arch):
    encoder, _ = modeling.load_encoder(str(tiny_models(arch)))
    tasks = write_deltas(encoder, tmp_path, labels=(3,))
    manifest = export_bundle(tmp_path / "b", model=str(tiny_models(arch)), tasks=[tasks[0][0]])
    assert manifest.text_inputs == ["input_ids", "attention_mask"] and manifest.architecture == arch
    text = tokenize(tmp_path / "b", TEXTS, manifest.text_inputs)
    base = load_file(str(tmp_path / "b/base.safetensors"))
    got = run(
        session(tmp_path / "b/model.onnx"), graph_feeds(text, base, [tasks[0][1]] * len(TEXTS))
    )
    assert np.abs(got - reference(encoder, tasks[0][1], text)).max() < 1e-4


def test_cli_export(tiny_models, deltas, tmp_path, capsys):
    task0 = str(deltas[1][0][0])
    argv = [
        "export",
        "--onnx",
        "--model",
        str(tiny_models("bert")),
        "--output",
        str(tmp_path / "b"),
        "--task",
        task0,
        "--quantize",
        "int8",
        "--bake",
        "task0",
    ]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "variants fp32, int8, baked task0" in capsys.readouterr().out
    manifest = read_manifest(tmp_path / "b")
    assert manifest.baked == {"task0": "baked/task0.onnx"} and "int8" in manifest.variants
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 1 and "OutputExistsError" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([*argv, "--force"])
    assert info.value.code == 0


@pytest.mark.slow
def test_packaged_minilm_bundle(tmp_path):
    """MiniLM, two random tasks in one mixed batch: fp32 to 1e-4, int8 to 25% of the logit scale.

    The int8 bound is loose on purpose: random deltas on all 49 biases push activations far
    from MiniLM's trained range (measured here: up to ~10% of the logit scale). What int8
    costs a trained task is measured as SST-2 accuracy in benchmarks/export_overhead.py.
    """
    encoder, model_dir = modeling.load_encoder()
    tasks = write_deltas(encoder, tmp_path, labels=(2, 3))
    manifest = export_bundle(tmp_path / "b", tasks=[p for p, _ in tasks], quantize="int8")
    assert (
        manifest.pooling == "mean"
        and len(manifest.bias_inputs) == 49
        and manifest.max_length == 256
    )
    base = load_file(str(tmp_path / "b/base.safetensors"))
    text = tokenize(tmp_path / "b", TEXTS, manifest.text_inputs)
    fp32, int8 = session(tmp_path / "b/model.onnx"), session(tmp_path / "b/model.int8.onnx")
    mixed = [tasks[i % 2][1] for i in range(len(TEXTS))]
    got = run(fp32, graph_feeds(text, base, mixed))
    got8 = run(int8, graph_feeds(text, base, mixed))
    for _, delta in tasks:
        want = reference(encoder, delta, text)
        rows = [i for i, d in enumerate(mixed) if d is delta]
        assert np.abs(got[rows, : delta.num_labels] - want[rows]).max() < 1e-4
        assert (
            np.abs(got8[rows, : delta.num_labels] - want[rows]).max() <= 0.25 * np.abs(want).max()
        )


def test_a_task_trained_longer_than_the_bundle_reads_is_warned_about(
    tiny_models, deltas, tmp_path, caplog
):
    path, delta = deltas[1][0]
    assert delta.metadata.max_length == 128
    with caplog.at_level("WARNING", logger="bitfit_deploy.export"):
        export_bundle(
            tmp_path / "short", model=str(tiny_models("bert")), tasks=[path], max_length=64
        )
    assert "task 'task0'" in caplog.text and "up to 128 tokens" in caplog.text
    assert "--max-length 128" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="bitfit_deploy.export"):
        export_bundle(tmp_path / "same", model=str(tiny_models("bert")), tasks=[path])
    assert "trained on inputs" not in caplog.text


def test_the_shortest_max_length_cuts_every_input(tiny_models, deltas, tmp_path):
    """At the least max length the bundle takes, every input is cut: none runs past it."""
    from bitfit_deploy.runtime import Runtime

    path, _ = deltas[1][0]
    manifest = export_bundle(
        tmp_path / "b", model=str(tiny_models("bert")), tasks=[path], max_length=5
    )
    assert manifest.max_length == 5
    rt = Runtime(tmp_path / "b", threads=1)
    long = "word " * 400  # beyond the tiny model's 128 positions
    out = rt.predict("task0", [long, (long, long), ("a", long), "short"])
    assert [p.truncated for p in out] == [True, True, True, False]


@pytest.mark.parametrize(
    ("setting", "expected"),
    [('{"max_seq_length": 64}', 64), ('{"max_seq_length": 4096}', 128), ("{}", 128)],
)
def test_a_sentence_transformers_max_length_is_read_within_the_positions(
    tiny_models, tmp_path, setting, expected
):
    model = tmp_path / "model"
    shutil.copytree(tiny_models("bert"), model)
    (model / "sentence_bert_config.json").write_text(setting)
    assert export_bundle(tmp_path / "b", model=str(model)).max_length == expected


@pytest.mark.parametrize(
    "setting", ['{"max_seq_length": "abc"}', '{"max_seq_length": 2}', "[1]", "{not json"]
)
def test_a_damaged_sentence_transformers_setting_is_one_line(tiny_models, tmp_path, setting):
    model = tmp_path / "model"
    shutil.copytree(tiny_models("bert"), model)
    (model / "sentence_bert_config.json").write_text(setting)
    with pytest.raises(ModelError, match="sentence_bert_config.json"):
        export_bundle(tmp_path / "b", model=str(model))
    assert not (tmp_path / "b").exists()


@settings(max_examples=40, deadline=None)
@given(opset=st.integers(min_value=-3, max_value=40), int8=st.booleans())
def test_an_opset_outside_the_tested_range_is_one_line(tiny_bert_dir, opset, int8):
    """Outside 10-23 (15-23 with int8) export refuses the opset before loading the model; it
    was torch's traceback (opset 5: a Slice error, 99: 'Unsupported onnx_opset_version')."""
    least = 15 if int8 else 10
    if least <= opset <= 23:
        return  # exported below, at the boundaries
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(
            ExportOptionError, match=f"--opset {opset} must be between {least} and 23"
        ):
            export_bundle(
                Path(tmp) / "b", model=tiny_bert_dir, opset=opset, quantize="int8" if int8 else None
            )
        assert not (Path(tmp) / "b").exists()


@pytest.mark.parametrize(("opset", "quantize"), [(10, None), (23, None), (15, "int8")])
def test_the_opset_range_boundaries_export_and_serve(tiny_models, tmp_path, opset, quantize):
    from bitfit_deploy.runtime import Runtime

    export_bundle(tmp_path / "b", model=str(tiny_models("bert")), opset=opset, quantize=quantize)
    rt = Runtime(tmp_path / "b", threads=1, variant=quantize or "fp32", load_bundle_tasks=False)
    assert rt.manifest.variants


EXPORT_ARGUMENTS = {  # argument -> the values it accepts (others must be refused, naming it)
    "model": lambda v: v is None or isinstance(v, str),
    "tasks": lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
    "pooling": lambda v: isinstance(v, str),
    "max_length": lambda v: v is None or type(v) is int,  # its range: test_bad_options
    "force": lambda v: isinstance(v, bool),
    "quantize": lambda v: v is None or isinstance(v, str),
    "bake": lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
    "int8_activations": lambda v: isinstance(v, str),
    "calibration": lambda v: v is None or isinstance(v, str),
    "progress": lambda v: isinstance(v, bool),
}


@settings(max_examples=80, deadline=None)
@given(
    argument=st.sampled_from(sorted(EXPORT_ARGUMENTS)),
    value=ODD_VALUES,
)
def test_an_export_argument_of_the_wrong_type_is_named(tiny_bert_dir, argument, value):
    """export_bundle(tasks=2.5), bake=-1 or max_length="8" were TypeErrors after loading the
    model; force="no" forced. Each is one InvalidInputError naming the argument, before any work."""
    from bitfit_deploy.errors import InvalidInputError

    if EXPORT_ARGUMENTS[argument](value):
        return  # accepted by type (its value may still be refused by the export's own checks)
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(InvalidInputError, match=argument):
            export_bundle(Path(tmp) / "b", **{"model": tiny_bert_dir, argument: value})
        assert not (Path(tmp) / "b").exists()


def test_tasks_of_another_base_are_named_as_such_before_their_pooling(
    tiny_models, deltas, tmp_path
):
    """A task of another base that also pools differently was reported as a pooling mismatch."""
    from bitfit_deploy.errors import FingerprintMismatchError

    path, delta = deltas[1][0]
    other = load_delta(path)
    other.metadata.base_fingerprint = "0" * 64
    other.metadata.pooling = "cls" if delta.metadata.pooling != "cls" else "mean"
    other.metadata.task = "other"
    foreign = save_delta(other, tmp_path / "other.safetensors")
    with pytest.raises(FingerprintMismatchError, match="other.safetensors.*trained on base 0000"):
        export_bundle(tmp_path / "b", model=str(tiny_models("bert")), tasks=[path, foreign])


def test_two_tasks_of_one_name_say_how_to_serve_both(tiny_models, deltas, tmp_path):
    path, _ = deltas[1][0]
    twin = save_delta(load_delta(path), tmp_path / "twin.safetensors")
    with pytest.raises(IncompatibleTaskError, match=r"load the other at run time.*name=\.\.\."):
        export_bundle(tmp_path / "b", model=str(tiny_models("bert")), tasks=[path, twin])
