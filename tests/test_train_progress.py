"""Quiet training output: one bar, one line per epoch with the metrics, no raw Trainer dicts."""

from __future__ import annotations

from bitfit_deploy.train import TrainConfig, train
from bitfit_deploy.train_progress import epoch_line


def test_epoch_line_names_the_metrics():
    line = epoch_line(2.0, 0.41234, {"eval_loss": 0.3, "eval_accuracy": 0.84, "eval_runtime": 1.0})
    assert line == "epoch 2: train loss 0.4123, eval loss 0.3000, accuracy 0.8400"
    assert epoch_line(1.0, None, {}) == "epoch 1: done"


def test_training_prints_one_line_per_epoch(tiny_bert, toy_tsv, tmp_path, capsys):
    cfg = TrainConfig(
        task="toy",
        train=str(toy_tsv(32)),
        eval=str(toy_tsv(16, seed=1, name="dev.tsv")),
        output=str(tmp_path / "d.safetensors"),
        model=str(tiny_bert),
        epochs=2,
        batch_size=16,
        max_length=16,
        progress=True,
    )
    train(cfg)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1", "epoch 2"]
    assert all("train loss" in ln and "accuracy" in ln for ln in lines)
    assert "{'loss'" not in text and "{'eval_loss'" not in text and "train_runtime" not in text
