"""benchmarks/quality.py on a tiny model and toy files: every method runs, results cache and resume,
the report reads partial results."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    if str(ROOT / "benchmarks") not in sys.path:  # as `python benchmarks/quality.py` runs it
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def toy_trec(folder: Path) -> Path:
    """A TREC-shaped data folder (label_coarse, label_fine, text) with a learnable toy task."""
    from conftest import toy_sentiment_rows

    trec = folder / "text" / "trec"
    trec.mkdir(parents=True)
    for name, n, seed in (("train.tsv", 80, 0), ("test.tsv", 24, 1)):
        rows = toy_sentiment_rows(n, seed)
        body = "".join(f"{'POS' if y else 'NEG'}\tX:y\t{s}\n" for s, y in rows)
        (trec / name).write_text("label_coarse\tlabel_fine\ttext\n" + body)
    return folder


def test_grid_caches_resumes_and_reports(quality, tiny_bert, tmp_path, capsys):
    data = toy_trec(tmp_path / "data")
    common = ["--tasks", "trec", "--model", str(tiny_bert), "--data", str(data)]
    common += ["--results", str(tmp_path / "res"), "--work", str(tmp_path / "work")]
    common += ["--plot", str(tmp_path / "q.png"), "--max-length", "16", "--batch-size", "16"]
    args = [*common, "--train-rows", "48", "--epochs", "1", "--head-epochs", "2"]
    quality.main(
        [*args, "--methods", "bitfit,head", "--int8-methods", "bitfit,head"]
    )  # no full yet
    out = capsys.readouterr().out
    assert "not run yet" not in out and "| trec (accuracy, 48 / 24) |" in out
    assert (tmp_path / "q.png").stat().st_size > 0
    results = {p.name: json.loads(p.read_text()) for p in (tmp_path / "res").glob("*.json")}
    assert set(results) == {
        "trec--bitfit.json",
        "trec--head.json",
        "trec--bitfit--int8.json",
        "trec--head--int8.json",
    }
    bitfit = results["trec--bitfit.json"]
    assert bitfit["train_rows"] == 48 and bitfit["dev_rows"] == 24
    assert (
        bitfit["evaluated_with"] == "onnxruntime fp32" and 0 <= bitfit["metrics"]["accuracy"] <= 1
    )
    assert bitfit["machine"]["cores"] >= 1 and "quality" in bitfit["command"]
    assert results["trec--head.json"]["trainable_parameters"] == 2 * 32 + 2
    # Rerun with full added: bitfit and head come from the cache; full trains and is scored in torch.
    quality.main(args)
    out = capsys.readouterr().out
    assert "trec--bitfit.json: cached" in out and "trec--head.json: cached" in out
    full = json.loads((tmp_path / "res" / "trec--full.json").read_text())
    assert full["evaluated_with"] == "pytorch" and full["train_rows"] == 48
    assert full["trainable_parameters"] > bitfit["trainable_parameters"]
    assert "average of 1 complete tasks" in out
    # New settings are not served from the cache.
    quality.main(
        [*common, "--train-rows", "40", "--epochs", "1", "--methods", "head", "--variants", "fp32"]
    )
    assert json.loads((tmp_path / "res" / "trec--head.json").read_text())["train_rows"] == 40
