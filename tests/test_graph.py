"""The per-row bias graph: equals the PyTorch reference per task, mixes tasks row by row, keeps inputs live."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from export_helpers import TEXTS, graph_feeds, reference, run, session, tokenize, write_deltas
from onnx import TensorProto, helper

from bitfit_deploy.contract import HEAD_BIAS, HEAD_WEIGHT, graph_bias_names
from bitfit_deploy.errors import ExportError, UnsupportedArchitectureError
from bitfit_deploy.exporters.bake import export_baked_graph
from bitfit_deploy.exporters.graph import (
    check_runtime_inputs,
    dummy_text_inputs,
    export_per_row_graph,
    hidden_size,
    normalized_config,
)
from bitfit_deploy.exporters.quantize import quantize_int8
from bitfit_deploy.modeling import encoder_inputs, load_encoder

ARCHS = ("bert", "roberta", "distilbert")


@pytest.fixture(scope="module")
def exported(tiny_models, tmp_path_factory):
    """Factory: (arch, pooling) -> (encoder, model_dir, graph path, base biases, [(path, delta)] x3)."""
    cache = {}

    def get(arch: str, pooling: str = "mean"):
        if (arch, pooling) not in cache:
            folder = tmp_path_factory.mktemp(f"graph-{arch}-{pooling}")
            encoder, model_dir = load_encoder(str(tiny_models(arch)))
            params = {n: p.detach().numpy() for n, p in encoder.named_parameters()}
            names = graph_bias_names(params, pooling)
            export_per_row_graph(encoder, pooling, names, folder / "model.onnx")
            base = {n: params[n].copy() for n in names}
            deltas = write_deltas(encoder, folder, pooling)
            cache[arch, pooling] = (encoder, model_dir, folder / "model.onnx", base, deltas)
        return cache[arch, pooling]

    return get


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pad_to", [None, 40])
def test_each_task_matches_pytorch(exported, arch, pad_to):
    encoder, model_dir, graph, base, deltas = exported(arch)
    sess = session(graph)
    for texts in (TEXTS, TEXTS[1:2]):  # many rows of varied lengths, and batch size 1
        text = tokenize(model_dir, texts, encoder_inputs(encoder), pad_to)
        for _, delta in deltas:
            got = run(sess, graph_feeds(text, base, [delta] * len(texts)))
            want = reference(encoder, delta, text)
            assert got.shape == want.shape == (len(texts), delta.num_labels)
            assert np.abs(got - want).max() < 1e-4, (arch, delta.metadata.task)


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_batch_equals_each_task_alone(exported, arch):
    encoder, model_dir, graph, base, deltas = exported(arch)
    sess = session(graph)
    text = tokenize(model_dir, TEXTS[:6], encoder_inputs(encoder))
    tasks = [deltas[i % 3][1] for i in range(6)]  # 2, 3 and 5 labels interleaved
    mixed = run(sess, graph_feeds(text, base, tasks))
    assert mixed.shape == (6, 5)  # padded to the widest head
    for i, delta in enumerate(tasks):
        row = {k: v[i : i + 1] for k, v in text.items()}
        alone = run(sess, graph_feeds(row, base, [delta]))
        assert np.abs(mixed[i, : delta.num_labels] - alone[0]).max() < 1e-5
        assert np.all(mixed[i, delta.num_labels :] == 0.0)  # zero padding rows give zero logits


@pytest.mark.parametrize("pooling", ["cls", "pooler"])
def test_other_poolings_match_pytorch(exported, pooling):
    encoder, model_dir, graph, base, deltas = exported("bert", pooling)
    assert any(n.startswith("pooler.") for n in base) == (pooling == "pooler")
    text = tokenize(model_dir, TEXTS, encoder_inputs(encoder))
    sess = session(graph)
    for _, delta in deltas:
        got = run(sess, graph_feeds(text, base, [delta] * len(TEXTS)))
        assert np.abs(got - reference(encoder, delta, text)).max() < 1e-4


def test_graph_inputs_follow_the_contract(exported):
    encoder, _, graph, base, _ = exported("bert")
    model = onnx.load(str(graph))
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs)[:3] == ["input_ids", "attention_mask", "token_type_ids"]
    assert set(inputs) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        *base,
        HEAD_WEIGHT,
        HEAD_BIAS,
    }
    assert inputs["input_ids"].elem_type == TensorProto.INT64
    assert [d.dim_param for d in inputs["input_ids"].shape.dim] == ["batch", "sequence"]
    assert [d.dim_param for d in inputs[HEAD_WEIGHT].shape.dim][:2] == ["batch", "num_labels"]
    assert inputs["embeddings.LayerNorm.bias"].elem_type == TensorProto.FLOAT
    assert not set(base) & {t.name for t in model.graph.initializer}
    assert [o.name for o in model.graph.output] == ["logits"]


def test_optimum_supplies_architecture_facts(tiny_models):
    bert, _ = load_encoder(str(tiny_models("bert")))
    distil, _ = load_encoder(str(tiny_models("distilbert")))
    assert hidden_size(distil) == 32 and normalized_config(distil).num_layers == 2
    assert list(dummy_text_inputs(bert)) == ["input_ids", "attention_mask", "token_type_ids"]
    assert list(dummy_text_inputs(distil)) == ["input_ids", "attention_mask"]
    mask = dummy_text_inputs(bert, batch=3, sequence=8)["attention_mask"]
    assert mask.shape == (3, 8) and 0 < int(mask.sum()) < 24  # traced with padding


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config, GPT2Model

    gpt2 = GPT2Model(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(
        UnsupportedArchitectureError, match="'gpt2'.*bert, roberta, xlm-roberta, distilbert"
    ):
        normalized_config(gpt2)


def _tiny_graph(path, bias_is_initializer: bool, bias_used: bool = True) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    b = helper.make_tensor_value_info("layer.bias", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 4])
    node = helper.make_node("Add", ["x", "layer.bias" if bias_used else "x"], ["logits"])
    inits = (
        [helper.make_tensor("layer.bias", TensorProto.FLOAT, [1, 4], [0.0] * 4)]
        if bias_is_initializer
        else []
    )
    graph = helper.make_graph([node], "g", [x, b], [y], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_check_refuses_overridable_or_dead_bias_inputs(tmp_path):
    _tiny_graph(tmp_path / "ok.onnx", bias_is_initializer=False)
    check_runtime_inputs(tmp_path / "ok.onnx", ["layer.bias"])
    _tiny_graph(tmp_path / "init.onnx", bias_is_initializer=True)
    with pytest.raises(ExportError, match="also initializers.*layer.bias"):
        check_runtime_inputs(tmp_path / "init.onnx", ["layer.bias"])
    _tiny_graph(tmp_path / "dead.onnx", bias_is_initializer=False, bias_used=False)
    with pytest.raises(ExportError, match="no node reads.*layer.bias"):
        check_runtime_inputs(tmp_path / "dead.onnx", ["layer.bias"])


def test_int8_stays_close_to_fp32(exported, tmp_path):
    """Tolerance: 5% of the largest |logit|.

    int8 weights carry 8 bits per tensor scale (~0.4% step of the largest weight); through two
    layers and the head this lands well under 1% of the logit scale here, while a broken
    variant (ignored biases, quantized heads of all zeros) is off by tens of percent.
    """
    encoder, model_dir, graph, base, deltas = exported("bert")
    quantize_int8(graph, tmp_path / "int8.onnx")
    check_runtime_inputs(tmp_path / "int8.onnx", [*base, HEAD_WEIGHT, HEAD_BIAS])
    model = onnx.load(str(tmp_path / "int8.onnx"))
    assert any(n.op_type == "MatMulIntegerToFloat" for n in model.graph.node)
    inits = {t.name: t.data_type for t in model.graph.initializer}
    tables = [n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits]
    assert len(tables) == 3 and all(
        inits[t] in (TensorProto.INT8, TensorProto.UINT8) for t in tables
    )  # embeddings
    assert not [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert (tmp_path / "int8.onnx").stat().st_size < 0.4 * graph.stat().st_size
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert all(inputs[n] == TensorProto.FLOAT for n in [*base, HEAD_WEIGHT, HEAD_BIAS])
    fp32, int8 = session(graph), session(tmp_path / "int8.onnx")
    text = tokenize(model_dir, TEXTS, encoder_inputs(encoder))
    for _, delta in deltas:
        feeds = graph_feeds(text, base, [delta] * len(TEXTS))
        want, got = run(fp32, feeds), run(int8, feeds)
        assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


def test_int8_row_answers_ignore_batch_mates(exported, tmp_path):
    """Per-token activation scales: a row scores the same alone, padded, or beside huge rows.

    ORT's dynamic quantization (one scale per tensor) moved a row by ~10% of the logit scale
    here when a batch-mate's activations were 50x larger; per token it must not move at all.
    """
    encoder, model_dir, graph, base, deltas = exported("bert")
    quantize_int8(graph, tmp_path / "int8.onnx")
    int8 = session(tmp_path / "int8.onnx")
    text = tokenize(model_dir, TEXTS, encoder_inputs(encoder))
    loud = deltas[1][1]
    loud_biases = {k: v * 50 for k, v in loud.biases.items()}
    loud = type(loud)(loud.metadata, loud_biases, loud.head_weight, loud.head_bias)
    rows = [deltas[0][1], loud] * (len(TEXTS) // 2) + [deltas[0][1]] * (len(TEXTS) % 2)
    batch = run(int8, graph_feeds(text, base, rows))
    for i in range(len(TEXTS)):
        alone = tokenize(model_dir, [TEXTS[i]], encoder_inputs(encoder))  # no padding at all
        want = run(int8, graph_feeds(alone, base, [rows[i]]))[0]
        width = rows[i].num_labels
        assert np.abs(batch[i, :width] - want[:width]).max() < 1e-5, i


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_baked_graph_matches_pytorch(exported, arch, tmp_path):
    encoder, model_dir, _, _, deltas = exported(arch)
    delta = deltas[2][1]
    inputs = export_baked_graph(encoder, delta, tmp_path / "baked.onnx")
    assert inputs == encoder_inputs(encoder)
    model = onnx.load(str(tmp_path / "baked.onnx"))
    assert [i.name for i in model.graph.input] == inputs  # biases and head are constants
    text = tokenize(model_dir, TEXTS, inputs)
    got = run(session(tmp_path / "baked.onnx"), text)
    assert np.abs(got - reference(encoder, delta, text)).max() < 1e-4
