"""`train --method head`: the frozen encoder's pooled features, a head trained alone, a bias-free delta."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bitfit_deploy.cli import main
from bitfit_deploy.delta import load_delta
from bitfit_deploy.modeling import apply_delta, load_encoder
from bitfit_deploy.train import TrainConfig, train


def head_config(model: Path, train_path: Path, output: Path, **kw) -> TrainConfig:
    base = dict(
        task="toy",
        train=str(train_path),
        output=str(output),
        model=str(model),
        method="head",
        pooling="mean",
        batch_size=16,
        max_length=16,
        lr=5e-2,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def test_head_trains_alone_and_writes_a_bias_free_delta(tiny_bert, toy_tsv, tmp_path):
    train_path, dev_path = toy_tsv(96, seed=0), toy_tsv(48, seed=1, name="dev.tsv")
    out = tmp_path / "head.safetensors"
    result = train(head_config(tiny_bert, train_path, out, eval=str(dev_path), epochs=30))
    delta = load_delta(out)
    assert delta.biases == {}
    assert delta.metadata.bias_selection == "none"
    assert delta.metadata.training["method"] == "head"
    assert delta.metadata.training["epochs"] == 30
    assert result.trainable_parameters == 32 * 2 + 2  # head only
    base, _ = load_encoder(str(tiny_bert))
    base_params = dict(base.named_parameters())
    for name, param in result.model.encoder.named_parameters():
        assert torch.equal(param.detach().cpu(), base_params[name].detach()), name
    np.testing.assert_array_equal(delta.head_weight, result.model.head.weight.detach().numpy())
    # The toy task is linearly separable by word identity; a probe on random features learns part.
    assert result.metrics["accuracy"] > 0.6, result.history
    assert len(result.history) >= 2


def test_head_delta_predicts_like_the_trained_model(tiny_bert, toy_tsv, tmp_path):
    """The delta applied to the base (the reference every exporter uses) is the trained model."""
    from transformers import AutoTokenizer

    out = tmp_path / "head.safetensors"
    result = train(head_config(tiny_bert, toy_tsv(64), out, max_steps=6))
    base, _ = load_encoder(str(tiny_bert))
    reference = apply_delta(base, load_delta(out))
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    enc = tok(["the food was superb", "our trip was dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = result.model.eval()(**enc)["logits"]
        got = reference(**enc)["logits"]
    torch.testing.assert_close(got, want)


def test_default_epochs_and_lr_follow_the_method(tmp_path):
    cfg = TrainConfig(task="t", train="x.tsv", output=str(tmp_path / "o"), method="head")
    assert cfg.num_epochs() == 10.0
    assert TrainConfig(task="t", train="x", output="o").num_epochs() == 2.0
    assert TrainConfig(task="t", train="x", output="o", epochs=3).num_epochs() == 3.0
    assert cfg.to_dict()["epochs"] == 10.0


def test_cli_head_method(tiny_bert, toy_tsv, tmp_path, capsys):
    out = tmp_path / "h.safetensors"
    args = ["train", "--task", "toy", "--train", str(toy_tsv(32)), "--output", str(out)]
    args += [
        "--model",
        str(tiny_bert),
        "--method",
        "head",
        "--max-steps",
        "2",
        "--max-length",
        "16",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    assert "66 of" in capsys.readouterr().out  # 32 x 2 weights + 2 biases trained
    assert load_delta(out).biases == {}
