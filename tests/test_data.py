"""Data loading: formats, header-less files, pairs, problem types, presets and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitfit_deploy.data import Columns, load_task_data, read_table
from bitfit_deploy.errors import DataError
from bitfit_deploy.presets import PRESETS, get_preset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared beside the repo
DATA = Path(__file__).parent / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_reads_bare_quotes_with_quoting_off(tmp_path):
    path = write(
        tmp_path / "t.tsv", 'sentence\tlabel\nhe said "hi\t1\nno "quote" here\t0\nplain\t1\n'
    )
    data = load_task_data(path)
    assert data.train.texts == ['he said "hi', 'no "quote" here', "plain"]
    assert data.train.labels == [1, 0, 1]
    assert data.labels == ["0", "1"]
    assert data.columns == {"text": "sentence", "pair": None, "label": "label"}


def test_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "bom.tsv"
    path.write_bytes("\ufeffQuality\t#1 String\t#2 String\n1\ta\tb\n0\tc\td\n".encode())
    data = load_task_data(path)
    assert data.columns == {"text": "#1 String", "pair": "#2 String", "label": "Quality"}
    assert data.train.pairs == ["b", "d"]


def test_csv_json_jsonl_parquet_and_datasets_folder(tmp_path):
    import datasets

    rows = [
        {"text": "good", "label": "pos"},
        {"text": "bad", "label": "neg"},
        {"text": "fine", "label": "pos"},
    ]
    write(tmp_path / "d.csv", 'text,label\ngood,pos\n"bad, really",neg\nfine,pos\n')
    write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    write(tmp_path / "d.json", json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows),
            "validation": datasets.Dataset.from_list(rows[:2]),
        }
    )
    dd.save_to_disk(str(tmp_path / "folder"))
    csv = load_task_data(tmp_path / "d.csv")
    assert csv.train.texts[1] == "bad, really"
    for name in ("d.jsonl", "d.json", "d.parquet"):
        data = load_task_data(tmp_path / name)
        assert data.train.texts == ["good", "bad", "fine"], name
        assert data.labels == ["neg", "pos"] and data.train.labels == [1, 0, 1]
    folder = load_task_data(tmp_path / "folder", tmp_path / "folder")
    assert len(folder.train) == 3 and len(folder.eval) == 2


def test_a_datasets_class_label_reads_as_its_names(tmp_path):
    """A saved `datasets` folder whose label is a ClassLabel read as '0' and '1'; the task then
    answered '0' where the data set says 'negative'. Parquet keeps the integers (no names)."""
    import datasets

    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
        }
    )
    rows = {"text": ["good", "bad", "fine"], "label": [1, 0, 1]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "folder"))
    data = load_task_data(tmp_path / "folder")
    assert data.labels == ["negative", "positive"] and data.train.labels == [1, 0, 1]


def test_headerless_file_by_column_index(tmp_path):
    path = write(
        tmp_path / "cola.tsv", "src\t1\t\tA fine sentence .\nsrc\t0\t*\tSentence bad a .\n"
    )
    data = load_task_data(path, columns=Columns(text="3", label=1))
    assert data.train.texts == ["A fine sentence .", "Sentence bad a ."]
    assert data.train.labels == [1, 0]
    rows, found = read_table(path, header=False)
    assert found == ["0", "1", "2", "3"] and len(rows) == 2


def test_sentence_pairs_and_regression(tmp_path):
    path = write(tmp_path / "sts.tsv", "sentence1\tsentence2\tscore\na\tb\t4.5\nc\td\t0.25\n")
    data = load_task_data(path, problem_type="regression")
    assert data.train.pairs == ["b", "d"]
    assert data.train.labels == [4.5, 0.25]
    assert data.num_labels == 1


def test_multi_label_from_lists_and_comma_strings(tmp_path):
    write(
        tmp_path / "m.jsonl",
        '{"text": "a", "labels": ["x", "y"]}\n{"text": "b", "labels": ["z"]}\n',
    )
    write(tmp_path / "m.tsv", "text\tlabels\na\tx,y\nb\tz\n")
    for name in ("m.jsonl", "m.tsv"):
        data = load_task_data(tmp_path / name, problem_type="multi_label")
        assert data.labels == ["x", "y", "z"]
        assert data.train.labels == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


@pytest.mark.parametrize("odd", [None, True, False])
def test_a_null_or_boolean_inside_a_multi_label_list_is_refused(tmp_path, odd):
    """["a", null] made a label "None", ["a", true] one named "True"."""
    row = json.dumps({"text": "t", "labels": ["a", odd]})
    path = write(
        tmp_path / "m.jsonl", row + "\n" + json.dumps({"text": "u", "labels": ["b"]}) + "\n"
    )
    with pytest.raises(DataError, match=f"has the label {json.dumps(odd)}"):
        load_task_data(path, problem_type="multi_label")


def test_class_labels_of_datasets_folders_read_as_names_and_minus_one_as_missing(tmp_path):
    """-1, datasets' "no label", trained as a class "-1"; a Sequence(ClassLabel) read as digits."""
    import datasets

    names = ["x", "y", "z"]
    single = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    )
    rows = {"text": ["a", "b", "c"], "label": [0, -1, 2]}
    datasets.Dataset.from_dict(rows, features=single).save_to_disk(str(tmp_path / "single"))
    with pytest.raises(DataError, match="no label"):
        load_task_data(tmp_path / "single")
    data = load_task_data(tmp_path / "single", drop_empty=True)
    assert data.labels == ["x", "z"] and len(data.train) == 2
    multi = datasets.Features(
        {
            "text": datasets.Value("string"),
            "labels": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    rows = {"text": ["a", "b"], "labels": [[0, 2], [1]]}
    datasets.Dataset.from_dict(rows, features=multi).save_to_disk(str(tmp_path / "multi"))
    assert load_task_data(tmp_path / "multi", problem_type="multi_label").labels == names


LABEL_NAMES = st.text(alphabet=st.sampled_from("xy, "), max_size=3)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(st.lists(LABEL_NAMES, max_size=3), min_size=2, max_size=4))
def test_a_multi_label_row_with_an_empty_or_comma_label_is_refused(tmp_path, rows):
    """["a", ""] made the label "", and ["a,b"] a label no TSV or CSV cell can name: both are
    refused, naming the row, in JSON lists and in comma-separated cells alike."""
    lines = [json.dumps({"text": f"t{i}", "labels": labels}) for i, labels in enumerate(rows)]
    jsonl = write(tmp_path / "m.jsonl", "\n".join(lines) + "\n")
    cells = [",".join(labels) for labels in rows]
    tsv = write(
        tmp_path / "m.tsv",
        "text\tlabels\n" + "".join(f"t{i}\t{c}\n" for i, c in enumerate(cells)),
    )
    list_bad = any(not x.strip() or "," in x for labels in rows for x in labels)
    cell_bad = any(c.strip() and any(not p.strip() for p in c.split(",")) for c in cells)
    for path, bad in ((jsonl, list_bad), (tsv, cell_bad)):
        try:
            data = load_task_data(path, problem_type="multi_label")
        except DataError as exc:
            if "empty label" in str(exc) or "comma" in str(exc):
                assert bad, (path.name, rows, exc)
                assert "line " in str(exc) or "row " in str(exc)
                continue
            assert "no rows" in str(exc) or "label" in str(exc), exc  # e.g. no label at all
            continue
        assert not bad, (path.name, rows)
        assert all(name.strip() and "," not in name for name in data.labels)


def test_numeric_labels_sort_numerically(tmp_path):
    path = write(tmp_path / "n.tsv", "text\tlabel\n" + "".join(f"t{i}\t{i}\n" for i in (10, 2, 1)))
    assert load_task_data(path).labels == ["1", "2", "10"]


def test_missing_column_lists_the_columns_found(tmp_path):
    path = write(tmp_path / "t.tsv", "review\tstars\nok\t1\nbad\t0\n")
    with pytest.raises(DataError, match=r"columns found are 'review', 'stars'.*--text-column"):
        load_task_data(path)
    with pytest.raises(DataError, match=r"no label column 'lable'.*'review', 'stars'"):
        load_task_data(path, columns=Columns(text="review", label="lable"))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    roles=st.tuples(*[st.one_of(st.none(), st.sampled_from(["a", "b", "c"]))] * 3),
    by_index=st.booleans(),
)
def test_one_column_in_two_roles_is_refused(tmp_path, roles, by_index):
    """Any two roles (text, pair, label) given the same column are refused, naming it, by name
    or by index; distinct columns read as given."""
    path = write(tmp_path / "t.tsv", "a\tb\tc\nx y\tp q\t1\nz w\tr s\t0\n")
    index = {"a": "0", "b": "1", "c": "2"}
    text, pair, label = (None if r is None else index[r] if by_index else r for r in roles)
    given = [r for r in roles if r is not None]
    if text is None or label is None:  # a, b, c are no names the reader guesses
        with pytest.raises(DataError, match="cannot tell which column"):
            load_task_data(path, columns=Columns(text=text, pair=pair, label=label))
    elif len(given) != len(set(given)):
        with pytest.raises(DataError, match=r"column '\w' would be both the \w+ and the \w+"):
            load_task_data(path, columns=Columns(text=text, pair=pair, label=label))
    else:
        data = load_task_data(path, columns=Columns(text=text, pair=pair, label=label))
        cells = {"a": ["x y", "z w"], "b": ["p q", "r s"], "c": ["1", "0"]}
        if by_index:  # columns by index: the file has no header, its first line is a row
            cells = {name: [name, *values] for name, values in cells.items()}
        assert data.train.texts == cells[roles[0]]
        assert data.train.pairs == (None if pair is None else cells[roles[1]])


@pytest.mark.parametrize(
    ("header", "columns", "message"),
    [
        (
            "sentence\tlabel",
            Columns(text="label"),
            "column 'label' would be both the text and the label",
        ),
        (
            "sentence\tlabel",
            Columns(label="sentence"),
            "column 'sentence' would be both the text and the label",
        ),
        (
            "sentence1\tsentence2\tlabel",
            Columns(pair="sentence1"),
            "column 'sentence1' would be both the text and the pair",
        ),
        ("sentence1\tsentence2\tlabel", Columns(text="sentence2"), None),  # no pair guessed then
    ],
)
def test_a_given_column_clashing_with_a_guessed_one_is_refused(tmp_path, header, columns, message):
    """`--text-column label` on a file with a 'label' column trained on the label itself (and
    `eval` scored a perfect 1.0); a guessed role counts as much as a given one."""
    width = header.count("\t")
    path = write(
        tmp_path / "t.tsv",
        header
        + "\n"
        + "\t".join(["a b"] * width + ["1"])
        + "\n"
        + "\t".join(["c d"] * width + ["0"])
        + "\n",
    )
    if message is None:
        assert load_task_data(path, columns=columns).train.texts == ["a b", "c d"]
    else:
        with pytest.raises(DataError, match=message):
            load_task_data(path, columns=columns)


@pytest.mark.parametrize(
    ("header", "refused"),
    [
        ("text\tlabel_coarse", True),
        ("Text\tLabel", True),
        ("title\tlabel_name", True),
        ("review\tclass_id", True),
        ("sentence\tpositive", True),  # a text column's name: the first row is a header
        ("a fine film\tclassic", False),  # 'classic' is no column word: a row
        ("a fine film\tvintage", False),
    ],
)
def test_header_rows_of_other_names_are_refused_under_index_columns(tmp_path, header, refused):
    """TREC's `label_coarse`, AG News' `label_name` and `Label` trained as classes of their own."""
    body = "".join(f"row {i}\t{y}\n" for i, y in enumerate(["DESC", "ENTY", "DESC", "ENTY"]))
    path = write(tmp_path / "t.tsv", header + "\n" + body)
    if refused:
        with pytest.raises(DataError, match="looks like a header"):
            load_task_data(path, columns=Columns(text=0, label=1))
    else:
        assert len(load_task_data(path, columns=Columns(text=0, label=1)).train) == 5


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    label_header=st.sampled_from(["label", "labels", "score", "Quality", "target"]),
    text_header=st.sampled_from(["sentence", "text", "review"]),
    header=st.booleans(),
    labels=st.lists(st.sampled_from(["0", "1", "pos", "neg"]), min_size=2, max_size=5),
)
def test_columns_by_index_refuse_a_header_row(tmp_path, label_header, text_header, header, labels):
    """`--text-column 0 --label-column 1` on a file with a header read the header as a row, and
    its 'label' became a class of its own; a first row whose label cell is a column name is now
    refused, and a file without a header reads as before."""
    body = "".join(f"text {i}\t{y}\n" for i, y in enumerate(labels))
    path = write(tmp_path / "t.tsv", (f"{text_header}\t{label_header}\n" if header else "") + body)
    if header:
        with pytest.raises(DataError, match="looks like a header.*pass the columns by name"):
            load_task_data(path, columns=Columns(text=0, label=1))
    elif len(set(labels)) > 1:
        data = load_task_data(path, columns=Columns(text="0", label="1"))
        assert data.train.texts == [f"text {i}" for i in range(len(labels))]


@pytest.mark.parametrize("column", [-1, "-1", "-12"])
def test_a_negative_column_index_is_named_as_such(tmp_path, column):
    """It got an error about mixing names and indexes."""
    path = write(tmp_path / "t.tsv", "a\tb\nx\t1\n")
    with pytest.raises(DataError, match=f"column index {column} is negative"):
        load_task_data(path, columns=Columns(text=column, label=1))


def test_mixed_names_and_indexes_refused(tmp_path):
    path = write(tmp_path / "t.tsv", "a\tb\nx\t1\n")
    with pytest.raises(DataError, match="not a mix"):
        load_task_data(path, columns=Columns(text="a", label=1))


@pytest.mark.parametrize("content", ["", "sentence\tlabel\n"])
def test_empty_data(tmp_path, content):
    path = write(tmp_path / "e.tsv", content)
    with pytest.raises(DataError, match="empty|no rows"):
        load_task_data(path)


def test_eval_labels_unseen_in_train(tmp_path):
    train = write(tmp_path / "train.tsv", "text\tlabel\na\tcat\nb\tdog\n")
    dev = write(tmp_path / "dev.tsv", "text\tlabel\na\tcat\nb\tbird\n")
    with pytest.raises(DataError, match=r"\['bird'\] that never occur in the training data"):
        load_task_data(train, dev)


def test_other_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_task_data(tmp_path / "nope.tsv")
    with pytest.raises(DataError, match="unknown data format"):
        load_task_data(write(tmp_path / "x.xml", "<a/>"))
    with pytest.raises(DataError, match="two labels or more"):
        load_task_data(write(tmp_path / "one.tsv", "text\tlabel\na\t1\nb\t1\n"))
    with pytest.raises(DataError, match=r"1 row has no label in column 'label': line 3\."):
        load_task_data(write(tmp_path / "gap.tsv", "text\tlabel\na\t1\nb\t\n"))
    with pytest.raises(DataError, match="not a finite number"):
        load_task_data(
            write(tmp_path / "r.tsv", "text\tlabel\na\thigh\n"), problem_type="regression"
        )
    with pytest.raises(DataError, match="unknown preset 'glue9'.*sst2"):
        get_preset("glue9")


def test_preset_label_map_and_names(tmp_path):
    path = write(tmp_path / "sst.tsv", "sentence\tlabel\nnice \t1\nawful \t0\n")
    p = get_preset("SST-2")
    data = load_task_data(path, path, p.columns(), p.problem_type, list(p.labels), p.label_map)
    assert data.labels == ["negative", "positive"] and data.train.labels == [1, 0]


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data beside the repo")
@pytest.mark.parametrize(
    ("name", "dev_rows"),
    [("sst2", 872), ("cola", 1043), ("mrpc", 408), ("rte", 277), ("stsb", 1500), ("qnli", 5463)],
)
def test_presets_read_the_real_glue_files(name, dev_rows):
    p = PRESETS[name]
    dev = SHARED / "glue" / name / "dev.tsv"
    data = load_task_data(
        dev, None, p.columns(), p.problem_type, list(p.labels) or None, p.label_map or None
    )
    assert len(data.train) == dev_rows
    assert all(t for t in data.train.texts)
    assert (data.train.pairs is not None) == (p.pair is not None)
    if p.problem_type == "regression":
        assert min(data.train.labels) >= 0.0 and max(data.train.labels) <= 5.0
    else:
        assert data.labels == list(p.labels) and set(data.train.labels) == {0, 1}


# Fault 3: empty texts are an error listing the rows, or with drop_empty a counted drop.
def test_empty_texts_are_listed():
    path = DATA / "bad_empty_texts.jsonl"
    with pytest.raises(DataError) as err:
        load_task_data(path)
    assert str(err.value) == (
        f"{path}: 3 rows have an empty text in column 'text': line 2, line 3, line 4. A cell is "
        'empty when it is missing, null, "" or only spaces. Fill in or remove these rows, or pass '
        "--drop-empty to skip them (the count is printed)."
    )


def test_drop_empty_skips_and_counts_them():
    data = load_task_data(DATA / "bad_empty_texts.jsonl", drop_empty=True)
    assert data.train.texts == ["a gorgeous film", "a dull film"]
    assert data.train.labels == [1, 0]
    report = data.train.report
    assert report.rows_read == 5 and report.rows_used == 2
    assert report.dropped == {"an empty text in column 'text'": ["line 2", "line 3", "line 4"]}


def test_empty_second_text_of_a_pair():
    path = DATA / "bad_empty_pair.jsonl"
    with pytest.raises(DataError) as err:
        load_task_data(path)
    assert str(err.value).startswith(
        f"{path}: 2 rows have an empty second text in column 'hypothesis': line 2, line 4. "
    )
    data = load_task_data(path, drop_empty=True)
    assert data.train.pairs == ["He rests.", "The sky is clear."]
    assert data.train.report.dropped == {
        "an empty second text in column 'hypothesis'": ["line 2", "line 4"]
    }


def test_every_kind_of_empty_cell_is_listed_with_a_count(tmp_path):
    rows = "".join(f"\t{i % 2}\n" for i in range(9)) + "ok\t\nfine\t1\n"
    path = write(tmp_path / "e.tsv", "text\tlabel\n" + rows)
    with pytest.raises(DataError) as err:
        load_task_data(path)
    assert (
        "9 rows have an empty text in column 'text': line 2, line 3, line 4, line 5, line 6 "
        "(and 4 more); 1 row has no label in column 'label': line 11."
    ) in str(err.value)
    with pytest.raises(DataError, match="every row has an empty text or label; no rows are left"):
        load_task_data(write(tmp_path / "all.tsv", "text\tlabel\n\t1\n  \t0\n"), drop_empty=True)


def test_text_that_is_not_a_string(tmp_path):
    path = write(
        tmp_path / "t.jsonl", '{"text": "ok", "label": 1}\n{"text": ["a", "b"], "label": 0}\n'
    )
    with pytest.raises(DataError, match=r"line 2 holds \['a', 'b'\] \(list\) in the text column"):
        load_task_data(path)
    numbers = write(tmp_path / "n.jsonl", '{"text": 1984, "label": 1}\n{"text": "b", "label": 0}\n')
    assert load_task_data(numbers).train.texts == ["1984", "b"]


# A clean GLUE/TREC-style file reads as before (rows, labels and order as the former reader gave).
def test_clean_glue_and_trec_style_files_read_as_before():
    rte = load_task_data(DATA / "clean_glue_style.tsv")
    assert rte.columns == {"text": "sentence1", "pair": "sentence2", "label": "label"}
    assert rte.train.texts == [
        'He said "hi" and left .',
        'The "best" film of 2001 , it \'s said .',
        '"Quoted at the start',
        "A trailing space ",
    ]
    assert rte.train.pairs == [
        "Nobody spoke .",
        "A film was praised .",
        'and "at the end"',
        "A café , naïve , 東京 .",
    ]
    assert rte.labels == ["entailment", "not_entailment"]
    assert rte.train.labels == [1, 0, 0, 1]
    trec = load_task_data(DATA / "clean_trec_style.tsv")
    assert trec.train.texts == [
        'How far is it from " here " to there ?',
        "Who wrote `` Dune '' ?",
        'What is a "" double quote ?',
    ]
    assert trec.labels == ["DESC", "HUM", "NUM"] and trec.train.labels == [2, 1, 0]
    assert trec.train.report.notes == [] and trec.train.report.dropped == {}
