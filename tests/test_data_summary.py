"""What `train` prints about its data before loading a model, and `train --dry-run`."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TOKENIZER_FILES, packaged_model_dir
from hypothesis import given, settings
from hypothesis import strategies as st

from bitfit_deploy.cli import cli
from bitfit_deploy.data import load_task_data
from bitfit_deploy.data_summary import count_truncated, describe, max_tokens

DATA = Path(__file__).parent / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer_only(tmp_path_factory) -> Path:
    """A model folder with the packaged tokenizer and a config, but no weights to load."""
    folder = tmp_path_factory.mktemp("tokenizer-only")
    for name in TOKENIZER_FILES:
        shutil.copy(packaged_model_dir() / name, folder / name)
    config = {"model_type": "bert", "max_position_embeddings": 64}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_summary_counts_on_a_small_file(tmp_path):
    train = write(
        tmp_path / "train.tsv",
        "text\tlabel\n"
        "a fine film\t1\n"
        "\n"
        "a dull film\t0\n"
        "   \t1\n"
        "flat\t0.0\n"
        "a very long review that goes on and on\t1\n",
    )
    dev = write(
        tmp_path / "dev.jsonl", '{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n'
    )
    data = load_task_data(train, dev, drop_empty=True)
    text = describe(data, {"train": 1, "eval": 0}, 8)
    assert text == "\n".join(
        [
            "data (single_label): text column 'text', label column 'label'",
            f"train: {train}",
            "  rows: 5 from 7 lines (1 header line, 1 blank line skipped)",
            "  dropped: 1 row with an empty text in column 'text' (line 5)",
            "  used: 4 rows",
            "  rows per label: 0=2, 1=2",
            "  note: label 0 is written as 0, 0.0; read as one label",
            "  longer than 8 tokens (truncated): 1 row (25.0%)",
            f"eval: {dev}",
            "  rows: 2 from 2 lines",
            "  rows per label: 0=1, 1=1",
            "  longer than 8 tokens (truncated): 0 rows (0.0%)",
        ]
    )


def test_summary_of_regression_and_multi_label(tmp_path):
    sts = load_task_data(
        write(tmp_path / "s.tsv", "sentence1\tsentence2\tscore\na\tb\t4.5\nc\td\t0.5\ne\tf\t2\n"),
        problem_type="regression",
    )
    assert "  target: 0.5 to 4.5, mean 2.333" in describe(sts).splitlines()
    multi = load_task_data(
        write(tmp_path / "m.tsv", "text\tlabels\na\tx,y\nb\ty\n"), problem_type="multi_label"
    )
    assert "  rows with each label: x=1, y=2" in describe(multi).splitlines()


def test_truncated_rows_match_the_training_tokenizer(tokenizer_only):
    from transformers import AutoTokenizer

    data = load_task_data(DATA / "clean_glue_style.tsv")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_only), local_files_only=True)
    encoded = tokenizer(data.train.texts, data.train.pairs, truncation=False)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    for limit in sorted(set(lengths)):
        expected = sum(1 for n in lengths if n > limit)
        assert count_truncated(tokenizer_only, data, limit) == {"train": expected}


def test_max_tokens_is_capped_by_the_positions(tokenizer_only, tmp_path):
    assert max_tokens(tokenizer_only, 128) == 64 and max_tokens(tokenizer_only, 16) == 16
    roberta = tmp_path / "roberta"
    roberta.mkdir()
    (roberta / "config.json").write_text(
        '{"model_type": "roberta", "max_position_embeddings": 514}'
    )
    assert max_tokens(roberta, 1024) == 512


def train_args(train: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return ["train", "--task", "t", "--train", str(train), "-o", str(out), "--model", str(model)]


def test_dry_run_prints_the_summary_and_loads_no_model(tokenizer_only, tmp_path, monkeypatch):
    import bitfit_deploy.train as train_module

    def no_model(*args, **kwargs):
        raise AssertionError("--dry-run loaded the model")

    monkeypatch.setattr(train_module, "load_encoder", no_model)
    out = tmp_path / "t.safetensors"
    args = [*train_args(DATA / "bad_empty_texts.jsonl", out, tokenizer_only), "--drop-empty"]
    result = CliRunner().invoke(cli, [*args, "--dry-run", "--max-length", "5"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "data (single_label): text column 'text', label column 'label'",
        f"train: {DATA / 'bad_empty_texts.jsonl'}",
        "  rows: 5 from 5 lines",
        "  dropped: 3 rows with an empty text in column 'text' (line 2, line 3, line 4)",
        "  used: 2 rows",
        "  rows per label: 0=1, 1=1",
        "  longer than 5 tokens (truncated): 0 rows (0.0%)",
        "dry run: the data reads cleanly; stopped before loading the model.",
    ]
    assert not out.exists()


@pytest.mark.parametrize("requested", [65, 100, 4096])
def test_a_max_length_beyond_the_positions_is_said_not_cut_silently(
    tokenizer_only, tmp_path, requested
):
    """The model has 64 positions: a larger --max-length is capped, and the summary says so."""
    args = train_args(DATA / "clean_glue_style.tsv", tmp_path / "t.safetensors", tokenizer_only)
    capped = CliRunner().invoke(cli, [*args, "--dry-run", "--max-length", str(requested)])
    assert capped.exit_code == 0, capped.output
    assert (
        f"note: --max-length {requested} is more than this model's 64 positions; inputs are cut "
        "at 64 tokens" in capped.output
    )
    fits = CliRunner().invoke(cli, [*args, "--dry-run", "--max-length", "64"])
    assert fits.exit_code == 0 and "note:" not in fits.output


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("bad_trailing_tab.tsv", [], "line 2 has 3 fields, the header has 2"),
        ("bad_multiline_quote.csv", [], "the file's 5 lines give 2 rows"),
        ("bad_empty_texts.jsonl", [], "pass --drop-empty"),
        ("bad_nonfinite_target.tsv", ["--problem-type", "regression"], "line 3 ('nan')"),
        ("bad_latin1.tsv", [], "line 2 is not UTF-8"),
    ],
)
def test_bad_files_stop_the_dry_run_with_one_line(tokenizer_only, tmp_path, name, extra, message):
    args = train_args(DATA / name, tmp_path / "t.safetensors", tokenizer_only)
    result = CliRunner().invoke(cli, [*args, *extra, "--dry-run"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: DataError: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_quoting_option_reaches_the_reader(tokenizer_only, tmp_path):
    args = train_args(DATA / "bad_multiline_quote.csv", tmp_path / "t.safetensors", tokenizer_only)
    result = CliRunner().invoke(cli, [*args, "--quoting", "none", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "  rows: 4 from 5 lines (1 header line)" in result.output.splitlines()


def test_training_prints_the_summary_first(tiny_models, toy_tsv, tmp_path):
    out = tmp_path / "toy.safetensors"
    args = train_args(toy_tsv(32), out, tiny_models("bert"))
    extra = ["--pooling", "mean", "--max-steps", "1", "--batch-size", "16", "--max-length", "16"]
    result = CliRunner().invoke(cli, [*args, *extra])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "data (single_label): text column 'sentence', label column 'label'"
    assert lines[2] == "  rows: 32 from 33 lines (1 header line)"
    assert any(line.startswith(f"wrote {out}") for line in lines[5:])  # after the summary
    from bitfit_deploy.delta import load_delta

    training = load_delta(out).metadata.training
    assert training["quoting"] is None and training["drop_empty"] is False


@settings(max_examples=60, deadline=None)
@given(
    model_type=st.sampled_from(["bert", "roberta", "xlm-roberta", "distilbert", "electra"]),
    positions=st.integers(min_value=8, max_value=4096),
    pad=st.one_of(st.none(), st.integers(min_value=0, max_value=4)),
    requested=st.integers(min_value=5, max_value=8192),
)
def test_one_position_limit_for_summary_training_and_export(model_type, positions, pad, requested):
    """The data summary, training and export read one limit; RoBERTa-style models keep pad + 1
    positions (1 + 1 when the config names no pad token, as RobertaConfig defaults)."""
    from transformers import AutoConfig

    from bitfit_deploy.model_folder import position_limit

    config = {"model_type": model_type, "max_position_embeddings": positions}
    if pad is not None:
        config["pad_token_id"] = pad
    offset = ((1 if pad is None else pad) + 1) if model_type in ("roberta", "xlm-roberta") else 0
    assert position_limit(config) == positions - offset
    hf = AutoConfig.for_model(**config).to_dict()  # what training and export see
    assert position_limit(hf) == positions - offset
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "config.json").write_text(json.dumps(config))
        shutil.copy(packaged_model_dir() / "tokenizer.json", folder)
        assert max_tokens(folder, requested) == min(requested, positions - offset)


@settings(max_examples=20, deadline=None)
@given(max_length=st.integers(min_value=1, max_value=12))
def test_train_refuses_a_max_length_that_cannot_hold_a_text(tokenizer_only, max_length):
    """BERT's pair is [CLS] a [SEP] b [SEP]: below 5 the tokenizer cuts nothing, so train (dry
    run or not, before loading the model) refuses it, naming the least it takes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "t.safetensors"
        args = train_args(DATA / "clean_glue_style.tsv", out, tokenizer_only)
        result = CliRunner().invoke(cli, [*args, "--dry-run", "--max-length", str(max_length)])
    if max_length < 5:
        assert result.exit_code != 0
        assert f"--max-length {max_length} is too short" in result.output
        assert "pass at least 5" in result.output
    else:
        assert result.exit_code == 0, result.output
