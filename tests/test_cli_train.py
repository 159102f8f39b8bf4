"""The `train`, `inspect` and `merge` commands, in-process through click's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from odd_values import ODD_VALUES

from bitfit_deploy.cli import cli
from bitfit_deploy.delta import load_delta

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "data"


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--task",
        "toy",
        "--train",
        str(data),
        "--output",
        str(out),
        "--model",
        str(model),
        "--pooling",
        "mean",
        "--max-steps",
        "2",
        "--batch-size",
        "16",
        "--max-length",
        "16",
        *extra,
    ]


@pytest.mark.parametrize("name", ["train", "inspect", "merge"])
def test_help(name):
    result = run(name, "--help")
    assert result.exit_code == 0
    expected = {
        "train": [
            "--task",
            "--train",
            "--eval",
            "--output",
            "--model",
            "--method",
            "--biases",
            "--epochs",
            "--max-steps",
            "--lr",
            "--batch-size",
            "--max-length",
            "--seed",
            "--text-column",
            "--text-pair-column",
            "--label-column",
            "--problem-type",
            "--preset",
            "--pooling",
            "--force",
            "--early-stopping",
        ],
        "inspect": ["PATH", "--json"],
        "merge": ["--delta", "--output", "--model", "--force"],
    }[name]
    for option in expected:
        assert option in result.output, option


def test_train_inspect_merge(tiny_bert, toy_tsv, tmp_path):
    data, out = toy_tsv(48), tmp_path / "toy.safetensors"
    result = run(
        *train_args(
            tiny_bert,
            data,
            out,
            "--eval",
            str(toy_tsv(16, seed=1, name="dev.tsv")),
            "--biases",
            "paper",
            "--lr",
            "0.01",
            "--seed",
            "3",
        )
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "parameters trained; eval loss" in result.output
    delta = load_delta(out)
    assert delta.metadata.bias_selection == "paper" and delta.metadata.training["seed"] == 3

    shown = run("inspect", str(out))
    assert shown.exit_code == 0
    for text in (
        "task            toy",
        "bias selection  paper",
        "pooling         mean",
        "labels          0, 1",
        "inputs          one text",
        delta.metadata.base_fingerprint[:19],
        "eval metrics    loss",
    ):
        assert text in shown.output, text
    info = json.loads(run("inspect", "--json", str(out)).output)
    assert info["task"] == "toy" and info["tensors"]["biases"] == len(delta.biases)

    merged = run(
        "merge",
        "--delta",
        str(out),
        "--output",
        str(tmp_path / "merged"),
        "--model",
        str(tiny_bert),
    )
    assert merged.exit_code == 0 and "load it with SentenceTransformer(folder)" in merged.output
    assert "task            toy" in run("inspect", str(tmp_path / "merged")).output


def test_errors_are_clean_messages(tiny_bert, toy_tsv, tmp_path):
    data, out = toy_tsv(16), tmp_path / "toy.safetensors"
    out.write_bytes(b"old")
    refused = run(*train_args(tiny_bert, data, out))
    assert (
        refused.exit_code == 1
        and "OutputExistsError" in refused.output
        and "--force" in refused.output
    )
    assert out.read_bytes() == b"old"
    assert run(*train_args(tiny_bert, data, out, "--force")).exit_code == 0
    assert load_delta(out).metadata.task == "toy"

    missing = run(
        *train_args(tiny_bert, data, tmp_path / "x.safetensors", "--label-column", "stars")
    )
    assert missing.exit_code == 1
    assert "DataError" in missing.output and "'sentence', 'label'" in missing.output
    preset = run(*train_args(tiny_bert, data, tmp_path / "y.safetensors", "--preset", "imdb"))
    assert preset.exit_code == 1 and "unknown preset 'imdb'" in preset.output
    assert "Traceback" not in missing.output + preset.output


@pytest.mark.slow
def test_packaged_minilm_on_real_sst2(tmp_path):
    from bitfit_deploy.modeling import base_fingerprint, load_encoder

    out = tmp_path / "sst2.safetensors"
    result = run(
        "train",
        "--task",
        "sst2",
        "--preset",
        "sst2",
        "--train",
        str(EXAMPLES / "sst2" / "train.tsv"),
        "--eval",
        str(EXAMPLES / "sst2" / "dev.tsv"),
        "--output",
        str(out),
        "--max-steps",
        "4",
        "--batch-size",
        "8",
        "--max-length",
        "32",
    )
    assert result.exit_code == 0, result.output
    assert out.stat().st_size < 300_000
    meta = load_delta(out).metadata
    assert meta.labels == ["negative", "positive"] and meta.pooling == "mean"
    assert meta.architecture == "bert" and meta.training["train_rows"] == 2000
    assert 0.0 <= meta.metrics["accuracy"] <= 1.0
    assert meta.base_fingerprint == base_fingerprint(load_encoder()[0])


numbers = st.none() | st.floats() | st.sampled_from([-1.0, 0.0, 1e-3, 2.0, float("inf")])
counts = st.none() | st.integers(-3, 3) | st.sampled_from([2**20, 2**20 + 1, 2**31 + 1, 10**20])


@settings(deadline=None)  # the first call imports torch
@given(
    lr=numbers,
    epochs=numbers,
    max_steps=counts,
    early=counts,
    batch=st.integers(-2, 3) | counts.filter(bool),
)
def test_training_settings_are_checked_before_any_work(lr, epochs, max_steps, early, batch):
    from bitfit_deploy.errors import DataError
    from bitfit_deploy.train import TrainConfig, check_config

    config = TrainConfig(
        task="t",
        train="never-read.tsv",
        output="never-written.safetensors",
        lr=lr,
        epochs=epochs,
        max_steps=max_steps,
        early_stopping=early,
        batch_size=batch,
    )
    valid = (
        (lr is None or 0 <= lr < float("inf"))
        and (max_steps is None or 1 <= max_steps <= 2**31)
        and (early is None or 1 <= early <= 2**31)
        and 1 <= batch <= 2**20
        and (max_steps is not None or epochs is None or 0 < epochs <= 10_000)
    )
    if valid:
        check_config(config)
    else:
        with pytest.raises(DataError, match="must be"):
            check_config(config)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_train_config_of_any_shape_is_refused_with_a_message_or_accepted(data):
    """TrainConfig(batch_size="8") or max_steps=True were TypeErrors or silently taken (the
    API takes any object); each field's type, then its range, is checked before any work."""
    import dataclasses

    from bitfit_deploy.errors import BitFitError
    from bitfit_deploy.train import TrainConfig, check_config

    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    changed = data.draw(
        st.dictionaries(st.sampled_from(fields), ODD_VALUES, min_size=1, max_size=3)
    )
    base = {"task": "t", "train": "never-read.tsv", "output": "never-written.safetensors"}
    config = TrainConfig(**{**base, **changed})
    try:
        check_config(config)
    except BitFitError as exc:
        assert str(exc).strip()
        return
    for name, value in changed.items():  # accepted: the value has its field's type
        if isinstance(value, bool):
            assert name in ("drop_empty", "force", "progress"), (name, value)
        if name in ("batch_size", "max_length", "seed"):
            assert type(value) is int
        if name == "seed":  # numpy's range: -1 or 2**32 was a traceback after loading the model
            assert 0 <= value < 2**32


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--lr", "-1"], "lr must be a number >= 0"),
        (["--max-steps", "-3"], "max_steps must be from 1 to"),
        (["--batch-size", "99999999999999999999"], "batch_size must be from 1 to"),
        (["--task", "my task"], "task name 'my task' is not usable"),
    ],
)
def test_bad_settings_stop_train_before_the_model_loads(toy_tsv, tmp_path, extra, says):
    """--model names no folder: a check that came after loading would report that instead."""
    args = ["train", "--task", "t", "--train", str(toy_tsv(16)), "--model", str(tmp_path / "none")]
    result = run(*args, "--output", str(tmp_path / "t.safetensors"), *extra)
    assert result.exit_code == 1 and says in result.output, result.output
    assert not (tmp_path / "t.safetensors").exists()


def test_a_run_that_changed_no_bias_says_so(tiny_bert, toy_tsv, tmp_path):
    """One step falls inside the learning-rate warm-up (it starts at 0): the delta is all zeros."""
    data = toy_tsv(16)
    still = run(*train_args(tiny_bert, data, tmp_path / "a.safetensors", "--max-steps", "1"))
    assert still.exit_code == 0 and "training changed no bias" in still.output
    assert not any(v.any() for v in load_delta(tmp_path / "a.safetensors").biases.values())
    moved = run(*train_args(tiny_bert, data, tmp_path / "b.safetensors", "--max-steps", "4"))
    assert moved.exit_code == 0 and "changed no bias" not in moved.output


def _float_options(command_name: str) -> list[str]:
    from bitfit_deploy.cli import cli
    from bitfit_deploy.commands._options import FiniteFloat

    command = cli.commands[command_name]
    return [p.opts[0] for p in command.params if isinstance(p.type, FiniteFloat)]


@pytest.mark.parametrize("command_name", ["serve", "train"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "NaN"])
def test_every_float_option_refuses_values_that_are_not_finite(command_name, value):
    """click's FloatRange took "nan" and "inf": `serve --max-delay-ms nan` or `--drain-s inf`
    made no sense and failed later, if at all. Every float option now refuses them by name."""
    options = _float_options(command_name)
    assert options, "no float option found"
    for option in options:
        result = run_invoke([command_name, option, value])
        assert result.exit_code == 2 and option in result.output
        assert "is not a finite number" in result.output or "is not in the range" in result.output


def run_invoke(args: list[str]):
    from bitfit_deploy.cli import cli

    return CliRunner().invoke(cli, args)


def test_a_train_config_takes_paths_as_the_other_apis_do():
    from pathlib import Path

    from bitfit_deploy.train import TrainConfig, check_config

    config = TrainConfig(task="t", train=Path("a.tsv"), eval=Path("b.tsv"), output=Path("o"))
    check_config(config)
    assert (config.train, config.eval, config.output) == ("a.tsv", "b.tsv", "o")
