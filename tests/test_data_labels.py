"""Labels: numeric spellings of one number are one label; targets and labels must be finite."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitfit_deploy.data import load_task_data
from bitfit_deploy.data_labels import canonical, label_key
from bitfit_deploy.errors import DataError

DATA = Path(__file__).parent / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# Fault 5: one label, two spellings.
def test_numeric_spellings_are_one_label():
    data = load_task_data(DATA / "label_spellings.tsv")
    assert data.labels == ["0", "1"]
    assert data.train.labels == [1, 0, 1, 0]
    assert data.train.report.notes == [
        "label 0 is written as 0, 0.0; read as one label",
        "label 1 is written as 1, 1.0; read as one label",
    ]


def test_spellings_across_types_and_files(tmp_path):
    train = write(
        tmp_path / "t.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b", "label": 0.0}\n{"text": "c", "label": " 2 "}\n',
    )
    dev = write(tmp_path / "d.tsv", "text\tlabel\na\t1.00\nb\t2e0\nc\t0\n")
    data = load_task_data(train, dev)
    assert data.labels == ["0", "1", "2"]
    assert data.train.labels == [1, 0, 2] and data.eval.labels == [1, 2, 0]
    assert data.eval.report.notes == []  # each label written one way within the dev file


def test_labels_that_differ_only_in_case_get_a_note(tmp_path):
    path = write(tmp_path / "c.tsv", "text\tlabel\na\tPositive\nb\tpositive\nc\tnegative\n")
    data = load_task_data(path)
    assert data.labels == ["Positive", "negative", "positive"]
    assert data.train.report.notes == [
        "labels 'Positive', 'positive' differ only in case and are read as 2 labels; write them "
        "one way if they are one"
    ]


def test_multi_label_spellings(tmp_path):
    path = write(
        tmp_path / "m.jsonl",
        '{"text": "a", "labels": [1, "2.0"]}\n{"text": "b", "labels": "2, 1.0"}\n',
    )
    data = load_task_data(path, problem_type="multi_label")
    assert data.labels == ["1", "2"]
    assert data.train.labels == [[1.0, 1.0], [1.0, 1.0]]


def test_given_names_match_any_spelling_of_their_number(tmp_path):
    # A task trained on labels named "0.0"/"1.0" still reads a file that writes 0/1.
    path = write(tmp_path / "t.tsv", "text\tlabel\na\t1\nb\t0\n")
    data = load_task_data(path, label_names=["0.0", "1.0"])
    assert data.labels == ["0.0", "1.0"] and data.train.labels == [1, 0]


def test_names_that_are_not_numbers_stay_distinct(tmp_path):
    path = write(tmp_path / "t.tsv", "text\tlabel\na\t01a\nb\t1a\nc\t1_0\nd\t10\n")
    assert load_task_data(path).labels == ["01a", "10", "1_0", "1a"]


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-Infinity"])
def test_class_label_that_reads_as_a_non_finite_number(tmp_path, value):
    path = write(tmp_path / "t.tsv", f"text\tlabel\na\t1\nb\t{value}\nc\t0\n")
    with pytest.raises(DataError) as err:
        load_task_data(path)
    assert str(err.value) == (
        f"{path}: 1 row has a label that reads as a number that is not finite: line 3 "
        f"({value!r}). Such a value most often marks a missing label; fill in or remove these rows."
    )


def test_list_label_in_single_label_task(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"text": "a", "label": ["x", "y"]}\n')
    with pytest.raises(
        DataError, match=r"line 1 has the label \['x', 'y'\], a list; .*multi_label"
    ):
        load_task_data(path)


# Fault 4: non-finite regression targets, found before any model is loaded.
def test_non_finite_targets_name_each_row_and_value():
    path = DATA / "bad_nonfinite_target.tsv"
    with pytest.raises(DataError) as err:
        load_task_data(path, problem_type="regression")
    assert str(err.value) == (
        f"{path}: 2 rows have a target that is not a finite number: line 3 ('nan'), line 5 "
        "('inf'). Regression needs a finite number in every row; fix or remove these rows."
    )


def test_non_finite_and_non_numeric_targets_in_json_and_eval(tmp_path):
    train = write(tmp_path / "t.tsv", "text\tscore\na\t1.5\nb\t2\n")
    dev = write(
        tmp_path / "d.jsonl",
        '{"text": "a", "score": NaN}\n{"text": "b", "score": true}\n{"text": "c", "score": "-Infinity"}\n'
        '{"text": "d", "score": "high"}\n{"text": "e", "score": 1e400}\n{"text": "f", "score": 3}\n',
    )
    with pytest.raises(DataError) as err:
        load_task_data(train, dev, problem_type="regression")
    assert str(err.value) == (
        f"{dev}: 5 rows have a target that is not a finite number: line 1 ('nan'), line 2 "
        "('True'), line 3 ('-Infinity'), line 4 ('high'), line 5 ('inf'). Regression needs a "
        "finite number in every row; fix or remove these rows."
    )


def test_targets_read_as_written(tmp_path):
    path = write(tmp_path / "t.tsv", "text\tscore\na\t 4.5 \nb\t-0.25\nc\t1e-3\n")
    assert load_task_data(path, problem_type="regression").train.labels == [4.5, -0.25, 0.001]


@given(n=st.integers(-(10**15), 10**15), zeros=st.integers(0, 4), pad=st.integers(0, 3))
def test_property_spellings_of_an_integer_are_one_key(n, zeros, pad):
    plain = str(abs(n))
    sign = "-" if n < 0 else ""
    spellings = [
        str(n),
        f"{sign}{'0' * pad}{plain}",
        f"{n}.{'0' * zeros}" if zeros else f"{n}.0",
        f" {n}e0 ",
        str(Decimal(n).scaleb(-zeros).scaleb(zeros)),
    ]
    assert {label_key(s) for s in spellings} == {str(n)}
    if abs(n) < 2**53:
        assert label_key(float(n)) == str(n)


@given(
    a=st.decimals(allow_nan=False, allow_infinity=False),
    b=st.decimals(allow_nan=False, allow_infinity=False),
)
def test_property_canonical_spelling_is_one_to_one(a, b):
    assert (canonical(a) == canonical(b)) == (a == b)
    assert Decimal(canonical(a)) == a


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    count=st.integers(min_value=2, max_value=40),
    step=st.sampled_from([1, 0.5, 0.2, 0.04]),
)
def test_many_fractional_number_labels_suggest_a_regression(tmp_path, count, step):
    """STS-B's score read as a label made a 140-class classifier without a hint; more than 20
    numeric labels (more than 10), not all whole, now say that --problem-type regression may be meant."""
    values = [round(i * step, 2) for i in range(count)]
    path = tmp_path / "s.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"text {i}\t{v}\n" for i, v in enumerate(values)))
    notes = load_task_data(path).train.report.notes
    hinted = any("--problem-type regression" in n for n in notes)
    assert hinted == (count > 10 and any(v != int(v) for v in values))


@given(
    gold=st.lists(st.sampled_from(["pos", "neg", "POS", "Neg", "other"]), min_size=1, max_size=4)
)
def test_labels_unknown_to_the_task_point_out_case_only_differences(tmp_path_factory, gold):
    """Eval reads labels by the task's names; 'POS' against 'pos' said only "not among"."""
    path = tmp_path_factory.mktemp("e") / "dev.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"t {i}\t{g}\n" for i, g in enumerate(gold)))
    unknown = sorted({g for g in gold} - {"pos", "neg"})
    if not unknown:
        assert load_task_data(path, label_names=["neg", "pos"]).labels == ["neg", "pos"]
        return
    with pytest.raises(DataError) as caught:
        load_task_data(path, label_names=["neg", "pos"])
    message = str(caught.value)
    assert "not among the expected" in message
    for label in unknown:
        assert (f"{label!r} (the task's labels have" in message) == (
            label.casefold() in ("pos", "neg")
        )


def test_train_eval_labels_differing_in_case_from_training_say_so(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\na\tpos\nb\tneg\n")
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\nc\tPOS\nd\tneg\n")
    with pytest.raises(DataError, match="'POS' \\(the training labels have 'pos'\\)"):
        load_task_data(train, dev)
