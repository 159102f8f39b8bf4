"""BitFit training on tiny random encoders: what trains, what stays frozen, what is written, bad input."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitfit_deploy.delta import load_delta
from bitfit_deploy.errors import DataError, ModelError, NoBiasError, OutputExistsError
from bitfit_deploy.modeling import TaskModel, apply_delta, load_encoder, select_biases, task_loss
from bitfit_deploy.train import TrainConfig, train


@pytest.fixture
def toy(toy_tsv):
    """Train and eval toy sentiment files."""
    return toy_tsv(64, seed=0, name="train.tsv"), toy_tsv(32, seed=1, name="dev.tsv")


def config(model: Path, train_path: Path, output: Path, **kw) -> TrainConfig:
    base = dict(
        task="toy",
        train=str(train_path),
        output=str(output),
        model=str(model),
        pooling="mean",
        batch_size=16,
        max_length=16,
        lr=2e-2,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def logits_of(model: TaskModel, model_dir: Path, texts: list[str]) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))[
            "logits"
        ]


@pytest.mark.parametrize("spec", ["all", "paper", r"output\.dense\.bias$"])
def test_only_selected_biases_and_head_change(tiny_bert, toy, tmp_path, spec):
    base, _ = load_encoder(str(tiny_bert))
    result = train(config(tiny_bert, toy[0], tmp_path / "d.safetensors", biases=spec, max_steps=4))
    expected = set(select_biases(base, spec, "mean"))
    if spec == "paper":
        assert all(re.search(r"query\.bias$|intermediate\.dense\.bias$", n) for n in expected)
    assert set(result.delta.biases) == expected
    base_params = dict(base.named_parameters())
    changed = set()
    for name, param in result.model.encoder.named_parameters():
        if torch.equal(param, base_params[name]):
            continue
        changed.add(name)
        diff = (param.detach() - base_params[name].detach()).numpy()
        np.testing.assert_array_equal(result.delta.biases[name], diff)
    assert changed <= expected, f"frozen weights changed: {sorted(changed - expected)}"
    # Attention key biases get no gradient (softmax ignores a per-query constant); the rest must move.
    assert len(changed) >= len([n for n in expected if "key" not in n]) > 0
    assert result.trainable_parameters == sum(base_params[n].numel() for n in expected) + 2 * 32 + 2


def test_loss_falls_on_the_toy_task(tiny_bert, toy_tsv, tmp_path):
    from conftest import toy_sentiment_rows
    from transformers import AutoTokenizer, set_seed

    rows = toy_sentiment_rows(128, seed=0)
    path = toy_tsv(128, seed=0)
    base, _ = load_encoder(str(tiny_bert))
    set_seed(7)  # train() seeds the same way right before it builds the head
    untrained = TaskModel(base, 2, "mean", "single_label")
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    enc = tok([r[0] for r in rows], padding=True, return_tensors="pt")
    labels = torch.tensor([r[1] for r in rows])

    def loss(model: TaskModel) -> float:
        with torch.no_grad():
            logits = model.eval()(enc["input_ids"], enc["attention_mask"])["logits"]
        return float(task_loss(logits, labels, "single_label"))

    before = loss(untrained)
    result = train(
        config(tiny_bert, path, tmp_path / "d.safetensors", epochs=4, lr=3e-2, seed=7, batch_size=8)
    )
    after = loss(result.model)
    assert after < before - 0.03, (before, after)  # measured: 0.690 -> 0.638


def test_delta_round_trip_reproduces_the_trained_model(tiny_bert, toy, tmp_path):
    out = tmp_path / "d.safetensors"
    result = train(config(tiny_bert, toy[0], out, eval=str(toy[1]), epochs=1))
    loaded = load_delta(out)
    assert loaded.metadata == result.delta.metadata
    for key, value in result.delta.tensors().items():
        np.testing.assert_array_equal(loaded.tensors()[key], value)
    meta = loaded.metadata
    assert meta.task == "toy" and meta.labels == ["0", "1"] and meta.pooling == "mean"
    assert (
        meta.architecture == "bert"
        and meta.max_length == 16
        and set(meta.metrics) >= {"accuracy", "loss"}
    )
    assert meta.training["method"] == "bitfit" and meta.training["train_rows"] == 64
    base, _ = load_encoder(str(tiny_bert))
    texts = ["the movie was great", "the food was awful"]
    ref = logits_of(apply_delta(base, loaded), tiny_bert, texts)
    torch.testing.assert_close(ref, logits_of(result.model, tiny_bert, texts), atol=1e-5, rtol=1e-5)


def test_same_seed_same_delta(tiny_bert, toy, tmp_path):
    runs = [
        train(config(tiny_bert, toy[0], tmp_path / f"{i}.safetensors", max_steps=3, seed=s)).delta
        for i, s in enumerate((1, 1, 2))
    ]
    for key, value in runs[0].tensors().items():
        np.testing.assert_array_equal(runs[1].tensors()[key], value)
    assert not np.array_equal(runs[0].head_weight, runs[2].head_weight)


def test_best_epoch_kept_and_early_stopping(tiny_bert, toy, tmp_path):
    result = train(
        config(tiny_bert, toy[0], tmp_path / "a.safetensors", eval=str(toy[1]), epochs=3)
    )
    assert len(result.history) == 3
    best = max(result.history, key=lambda h: h["accuracy"])
    assert result.metrics["accuracy"] == best["accuracy"] and result.best_epoch == best["epoch"]
    assert result.delta.metadata.metrics == result.metrics
    # lr 0: nothing improves after the first evaluation, so patience 1 stops after the second.
    stopped = train(
        config(
            tiny_bert,
            toy[0],
            tmp_path / "b.safetensors",
            eval=str(toy[1]),
            epochs=5,
            lr=0.0,
            early_stopping=1,
        )
    )
    assert [h["epoch"] for h in stopped.history] == [1.0, 2.0]


def test_multi_label_and_regression_tasks(tiny_bert, tmp_path):
    multi = tmp_path / "m.tsv"
    multi.write_text(
        "text\tlabels\n" + "".join(f"row {i}\t{'a,b' if i % 2 else 'c'}\n" for i in range(16))
    )
    result = train(
        config(
            tiny_bert,
            multi,
            tmp_path / "m.safetensors",
            eval=str(multi),
            max_steps=2,
            problem_type="multi_label",
        )
    )
    assert result.delta.metadata.labels == ["a", "b", "c"] and result.delta.head_weight.shape == (
        3,
        32,
    )
    assert set(result.metrics) >= {"f1", "accuracy"}
    assert result.delta.metadata.inputs == "single"  # the runtime refuses pairs for it
    reg = tmp_path / "r.tsv"
    reg.write_text(
        "sentence1\tsentence2\tscore\n" + "".join(f"a {i}\tb {i}\t{i % 5}.5\n" for i in range(16))
    )
    result = train(
        config(
            tiny_bert,
            reg,
            tmp_path / "r.safetensors",
            eval=str(reg),
            max_steps=2,
            problem_type="regression",
        )
    )
    assert result.delta.head_weight.shape == (1, 32) and set(result.metrics) >= {
        "pearson",
        "spearman",
    }
    assert result.delta.metadata.training["columns"]["pair"] == "sentence2"
    assert result.delta.metadata.inputs == "pair"


def test_full_method_writes_a_model_folder(tiny_bert, toy, tmp_path):
    from bitfit_deploy.merge import load_model_folder

    out = tmp_path / "full"
    result = train(config(tiny_bert, toy[0], out, method="full", max_steps=2, lr=1e-3))
    assert result.delta is None
    # mean pooling has no exact transformers head: a sentence-transformers folder (see test_merge)
    assert {"modules.json", "0_Transformer", "2_Dense", "bitfit_task.json"} <= {
        p.name for p in out.iterdir()
    }
    base, _ = load_encoder(str(tiny_bert))
    moved = base.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(result.model.encoder.encoder.layer[0].attention.self.query.weight, moved)
    reloaded, meta = load_model_folder(out)
    assert meta.training["method"] == "full"
    texts = ["our trip was lovely"]
    torch.testing.assert_close(
        logits_of(reloaded, out / "0_Transformer", texts), logits_of(result.model, tiny_bert, texts)
    )


def test_model_without_biases_says_so(toy, tmp_path):
    from transformers import AutoModel, LlamaConfig

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    AutoModel.from_config(cfg).save_pretrained(tmp_path / "llama")
    with pytest.raises(NoBiasError, match="has no bias terms.*LLaMA-style"):
        train(config(tmp_path / "llama", toy[0], tmp_path / "d.safetensors"))


def test_bad_configuration_is_refused_before_training(tiny_bert, toy, tmp_path):
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--force"):
        train(config(tiny_bert, toy[0], out))
    assert out.read_bytes() == b"keep me"
    with pytest.raises(DataError, match="unknown preset 'sst9'"):
        train(config(tiny_bert, toy[0], tmp_path / "p.safetensors", preset="sst9"))
    with pytest.raises(ModelError, match="unknown method"):
        train(config(tiny_bert, toy[0], tmp_path / "m.safetensors", method="lora"))
    with pytest.raises(ModelError, match="matches no bias"):
        train(config(tiny_bert, toy[0], tmp_path / "r.safetensors", biases="nothing_like_this"))


def test_interrupted_run_leaves_nothing_behind(tiny_bert, toy, tmp_path, monkeypatch):
    from transformers import Trainer

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "out" / "d.safetensors"

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(config(tiny_bert, toy[0], out, max_steps=1))
    assert not out.exists() and list(scratch.iterdir()) == []

    real_write = Path.write_bytes

    def half_write(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", half_write)
    with pytest.raises(OSError, match="disk full"):
        train(config(tiny_bert, toy[0], out, max_steps=1))
    assert list(out.parent.iterdir()) == [] and list(scratch.iterdir()) == []


@settings(max_examples=60, deadline=None)
@given(
    first=st.lists(st.text(alphabet=st.sampled_from("ab é日-."), max_size=6), max_size=10).map(
        " ".join
    ),
    second=st.lists(st.text(alphabet=st.sampled_from("ab é日-."), max_size=6), max_size=10).map(
        " ".join
    ),
    max_length=st.integers(min_value=5, max_value=20),
)
def test_training_cuts_pairs_as_the_tokenizer_would(first, second, max_length):
    """Training tokenizes pairs without transformers' own pair truncation (quadratic in the
    sides' length); the features must be exactly those it would give."""
    from transformers import AutoTokenizer

    from bitfit_deploy.data import Split
    from bitfit_deploy.modeling import default_model_path
    from bitfit_deploy.train import _encode

    tokenizer = AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)
    split = Split([first or "x"], [second or "y"], [0])
    got = _encode(tokenizer, split, max_length).features[0]
    want = tokenizer(split.texts, split.pairs, truncation=True, max_length=max_length)
    assert {k: v for k, v in got.items() if k != "labels"} == {k: want[k][0] for k in want}
