"""`bitfit-deploy eval`: runtime predictions scored on labelled files; reports, label errors, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from odd_values import ODD_VALUES
from runtime_fixtures import synthetic_delta

from bitfit_deploy.cli import main
from bitfit_deploy.delta import save_delta
from bitfit_deploy.errors import DataError
from bitfit_deploy.evaluate import evaluate, score
from bitfit_deploy.metrics import pearson, spearman
from bitfit_deploy.train import TrainConfig, train


@pytest.fixture(scope="module")
def bundle(tiny_bert, tmp_path_factory):
    from bitfit_deploy.exporters.bundle import export_bundle

    out = tmp_path_factory.mktemp("ev") / "bundle"
    export_bundle(out, model=str(tiny_bert))
    return out


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    """A BitFit delta and a head delta trained on the toy task, with its train and dev files."""
    from conftest import toy_sentiment_rows

    folder = tmp_path_factory.mktemp("trained")
    files = {}
    for name, n, seed in (("train", 64, 0), ("dev", 40, 1)):
        rows = toy_sentiment_rows(n, seed)
        files[name] = folder / f"{name}.tsv"
        files[name].write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    out = {}
    for method in ("bitfit", "head"):
        out[method] = folder / f"{method}.safetensors"
        cfg = TrainConfig(
            task=f"toy-{method}",
            train=str(files["train"]),
            output=str(out[method]),
            model=str(tiny_bert),
            method=method,
            max_steps=3,
            max_length=16,
            batch_size=16,
            progress=False,
        )
        train(cfg)
    return out, files


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


def test_cli_report_matches_the_torch_reference(tiny_bert, bundle, trained, tmp_path, capsys):
    deltas, files = trained
    report_path = tmp_path / "report.json"
    args = ["eval", "--bundle", str(bundle), "--task", str(deltas["bitfit"])]
    args += ["--data", str(files["dev"]), "--output", str(report_path), "--threads", "1"]
    args += ["--compare-torch", "--model", str(tiny_bert), "--batch-size", "8"]
    assert run_cli(args) == 0
    assert "toy-bitfit (fp32, 40 rows" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert set(report["metrics"]) >= {"accuracy", "f1", "macro_f1", "matthews"}
    assert report["rows"] == 40 and sum(report["label_counts"].values()) == 40
    confusion = np.array(report["confusion"])
    assert confusion.shape == (2, 2) and confusion.sum() == 40
    assert report["metrics"]["accuracy"] == pytest.approx(np.trace(confusion) / 40)
    assert report["seconds"] > 0 and report["variant"] == "fp32" and report["metric"] == "accuracy"
    cmp = report["compare_torch"]
    assert cmp["max_abs_logit_diff"] < 1e-4 and cmp["prediction_agreement"] == 1.0
    assert cmp["torch_metrics"]["accuracy"] == pytest.approx(report["metrics"]["accuracy"])
    # No overwrite without --force; with it, the report is replaced.
    assert run_cli(args[:-5]) == 1
    assert "exists already" in capsys.readouterr().err
    assert run_cli([*args[:-5], "--force"]) == 0


def test_the_torch_reference_cuts_where_the_runtime_does(tiny_bert, bundle, trained, tmp_path):
    """The task reads 16 tokens, the bundle 128: the reference cut at the bundle's length, so
    long rows showed a false fp32 difference of about 1e-2 against the served logits."""
    from bitfit_deploy.evaluate import compare_with_torch
    from bitfit_deploy.manifest import read_manifest

    delta = synthetic_delta(read_manifest(bundle), "short", seed=3)  # a head large enough to see
    delta.metadata.max_length = 16
    path = save_delta(delta, tmp_path / "short.safetensors")
    long = tmp_path / "long.tsv"
    words = "good film " * 30
    long.write_text(
        f"sentence\tlabel\n{words}\tpositive\nbad {words}\tnegative\nshort one\tpositive\n"
    )
    report = evaluate(bundle, str(path), long, progress=False, threads=1)
    assert report.max_length == 16 and report.truncated == 2
    cmp = compare_with_torch(report, bundle, str(path), long, model=str(tiny_bert), progress=False)
    assert cmp["max_abs_logit_diff"] < 1e-4


def test_head_delta_is_a_task_of_any_bundle_of_its_base(bundle, trained):
    """The head-only delta has no biases; it still runs on a bundle exported without it."""
    deltas, files = trained
    report = evaluate(bundle, str(deltas["head"]), files["dev"], progress=False, threads=1)
    assert report.task == "toy-head" and report.rows == 40
    assert 0.0 <= report.metrics["accuracy"] <= 1.0


def test_unknown_labels_are_named(bundle, trained, tmp_path, capsys):
    deltas, _ = trained
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\nnice film\t1\nodd film\t7\nweird film\tmaybe\n")
    with pytest.raises(DataError, match=r"\['7', 'maybe'\]"):
        evaluate(bundle, str(deltas["bitfit"]), bad, progress=False)
    args = ["eval", "--bundle", str(bundle), "--task", str(deltas["bitfit"]), "--data", str(bad)]
    assert run_cli(args) == 1
    assert "DataError" in capsys.readouterr().err


def test_eval_reads_as_training_does_quoting_and_empty_rows(bundle, trained, tmp_path, capsys):
    """--quoting csv joins a quoted field holding the delimiter; --drop-empty skips and counts."""
    deltas, _ = trained
    data = tmp_path / "quoted.csv"
    data.write_text('sentence,label\n"good, very good",1\n,0\n"dull, so dull",0\nfine,1\n')
    with pytest.raises(DataError, match="empty"):
        evaluate(bundle, str(deltas["bitfit"]), data, progress=False, threads=1)
    report = evaluate(
        bundle, str(deltas["bitfit"]), data, progress=False, threads=1, drop_empty=True
    )
    assert report.rows == 3 and sum(len(w) for w in report.dropped.values()) == 1
    assert "1 rows with empty fields skipped" in report.summary()
    tsv = tmp_path / "quoted.tsv"
    tsv.write_text('sentence\tlabel\n"a\tquoted film"\t1\nplain film\t0\n')
    args = ["eval", "--bundle", str(bundle), "--task", str(deltas["bitfit"]), "--data", str(tsv)]
    assert run_cli(args) == 1  # quoting off: the quoted tab splits the row
    assert run_cli([*args, "--quoting", "csv", "--threads", "1"]) == 0
    assert "2 rows" in capsys.readouterr().out


def test_eval_refuses_the_label_column_as_the_text(bundle, trained, capsys):
    """`eval --text-column label` scored the label itself: a perfect, meaningless accuracy."""
    deltas, files = trained
    args = ["eval", "--bundle", str(bundle), "--task", str(deltas["bitfit"])]
    assert run_cli([*args, "--data", str(files["dev"]), "--text-column", "label"]) == 1
    assert "column 'label' would be both the text and the label" in capsys.readouterr().err


def test_task_name_not_in_bundle_says_what_to_pass(bundle, trained, capsys):
    _, files = trained
    args = ["eval", "--bundle", str(bundle), "--task", "nope", "--data", str(files["dev"])]
    assert run_cli(args) == 1
    assert "pass --task with a task name from the bundle or the path" in capsys.readouterr().err


def test_regression_pairs_and_max_rows(bundle, tmp_path):
    from bitfit_deploy.manifest import read_manifest

    delta = synthetic_delta(read_manifest(bundle), "sim", "regression", [], seed=3)
    path = save_delta(delta, tmp_path / "sim.safetensors")
    data = tmp_path / "sts.tsv"
    rows = [("a man plays", "a person plays", 4.5), ("cats sleep", "stocks fell", 0.2)] * 5
    data.write_text(
        "sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows)
    )
    report = evaluate(bundle, str(path), data, progress=False, max_rows=6)
    assert report.rows == 6 and report.logits.shape == (6, 1)
    assert set(report.metrics) == {"pearson", "spearman", "mse"} and report.confusion is None
    assert report.metric == "pearson"


@settings(max_examples=30, deadline=None)
@given(
    gold=st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=6),
    pred=st.lists(st.floats(-5, 5, allow_nan=False), min_size=6, max_size=6),
    constant_pred=st.booleans(),
)
def test_a_correlation_of_constant_values_or_one_row_is_undefined_not_zero(
    gold, pred, constant_pred
):
    """Pearson and Spearman read 0.0 for constant targets or a single row, which says "no
    correlation"; the report now says undefined (None in JSON), and scores the rest."""
    pred = np.array([[pred[0]]] * len(gold) if constant_pred else [[p] for p in pred[: len(gold)]])
    scored = score(pred, gold, "regression", ["score"])["metrics"]
    undefined = len(gold) < 2 or np.ptp(gold) == 0 or np.ptp(pred) == 0
    assert (scored["pearson"] is None) == undefined and (scored["spearman"] is None) == undefined
    assert scored["mse"] == pytest.approx(np.mean((pred[:, 0] - np.array(gold)) ** 2))
    if not undefined:
        assert -1 <= scored["pearson"] <= 1


def test_the_summary_says_undefined(bundle, tmp_path):
    from bitfit_deploy.manifest import read_manifest

    delta = synthetic_delta(read_manifest(bundle), "sim", "regression", [], seed=3)
    path = save_delta(delta, tmp_path / "sim.safetensors")
    data = tmp_path / "const.tsv"
    data.write_text("sentence\tscore\nfine\t3.0\ndull\t3.0\n")
    report = evaluate(bundle, str(path), data, progress=False, threads=1)
    assert report.metrics["pearson"] is None and "pearson undefined" in report.summary()
    assert report.to_dict()["metrics"]["spearman"] is None


def test_score_multi_label_counts():
    logits = np.array([[1.0, -1.0, 2.0], [-1.0, 1.0, -2.0]])
    gold = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    out = score(logits, gold, "multi_label", ["a", "b", "c"])
    assert out["label_counts"] == {"a": 1, "b": 1, "c": 0}
    assert out["predicted_counts"] == {"a": 1, "b": 1, "c": 1}
    assert out["metrics"]["accuracy"] == pytest.approx(0.5)


def test_numpy_correlations_match_scipy_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 200).astype(float)
    b = a + rng.normal(size=200)
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)
    assert pearson(a, b) == pytest.approx(scipy_stats.pearsonr(a, b).statistic, abs=1e-12)


def test_eval_runs_without_torch(bundle, trained):
    """The runtime side of eval (reader, runtime, metrics) never imports torch."""
    deltas, files = trained
    code = (
        "import sys\n"
        "from bitfit_deploy.evaluate import evaluate\n"
        f"r = evaluate({str(bundle)!r}, {str(deltas['bitfit'])!r}, {str(files['dev'])!r}, "
        "progress=False, threads=1)\n"
        "assert r.rows == 40, r.rows\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_packaged_minilm_eval_of_a_shipped_task(tmp_path):
    """The README flow on the packaged MiniLM: a head task on the SST-2 sample, shipped, then eval."""
    from bitfit_deploy.exporters.bundle import export_bundle

    sample = Path(__file__).resolve().parents[1] / "examples" / "data" / "sst2"
    delta = tmp_path / "sst2.safetensors"
    cfg = TrainConfig(
        task="sst2",
        train=str(sample / "train.tsv"),
        output=str(delta),
        preset="sst2",
        method="head",
        max_steps=20,
        progress=False,
    )
    train(cfg)
    export_bundle(tmp_path / "b", tasks=[delta])
    report = evaluate(tmp_path / "b", "sst2", sample / "dev.tsv", max_rows=64, progress=False)
    assert report.labels == ["negative", "positive"] and report.rows == 64
    assert report.metrics["accuracy"] > 0.6


EVAL_ARGUMENTS = {  # argument -> what it accepts by type (values are checked further on)
    "max_rows": lambda v: v is None or (type(v) is int and v >= 1),
    "batch_size": lambda v: type(v) is int and 1 <= v <= 65536,
    "progress": lambda v: isinstance(v, bool),
    "drop_empty": lambda v: isinstance(v, bool),
    "quoting": lambda v: v is None or isinstance(v, str),
    "preset": lambda v: v is None or isinstance(v, str),
    "columns": lambda v: v is None,
    "threads": lambda v: v is None or (type(v) is int and 1 <= v <= 4096),
}


@settings(max_examples=60, deadline=None)
@given(
    argument=st.sampled_from(sorted(EVAL_ARGUMENTS)),
    value=ODD_VALUES,
)
def test_an_eval_argument_of_the_wrong_type_is_named(bundle, trained, argument, value):
    """evaluate(batch_size="8") or max_rows="3" were TypeErrors; progress="no" showed a bar."""
    from bitfit_deploy.errors import InvalidInputError

    deltas, files = trained
    if EVAL_ARGUMENTS[argument](value):
        return
    with pytest.raises(InvalidInputError, match=argument if argument != "threads" else "threads"):
        evaluate(bundle, str(deltas["bitfit"]), files["dev"], **{argument: value})
