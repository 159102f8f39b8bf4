"""Reading files: every row is what the file says; malformed tables stop with file, line and cause."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitfit_deploy.data import read_table
from bitfit_deploy.data_tables import read_file
from bitfit_deploy.errors import DataError

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


# Fault 1: a trailing delimiter.
def test_trailing_tab_names_line_2_and_the_cause():
    path = DATA / "bad_trailing_tab.tsv"
    with pytest.raises(DataError) as err:
        read_file(path)
    assert str(err.value) == (
        f"{path}: line 2 has 3 fields, the header has 2; all 4 data lines differ: line 2, line 3, "
        "line 4, line 5. Likely cause: the extra field is empty: the line ends with a tab (a "
        "trailing delimiter). Remove the trailing tabs, or name the extra column in the header."
    )


def test_trailing_comma_in_csv_and_header_with_the_same_trailing_tab(tmp_path):
    with pytest.raises(
        DataError, match=r"line 3 has 3 fields, the header has 2\. .*ends with a comma"
    ):
        read_file(write(tmp_path / "t.csv", "text,label\nok,1\nbad,0,\n"))
    # A header that ends with the same delimiter is consistent: an unnamed, empty last column.
    table = read_file(write(tmp_path / "t.tsv", "text\tlabel\t\na\t1\t\nb\t0\t\n"))
    assert table.columns == ["text", "label", ""]
    assert [(r["text"], r["label"]) for r in table.rows] == [("a", "1"), ("b", "0")]


# Fault 2: a quoted CSV field that runs over lines.
def test_quoted_field_over_lines_says_where_it_opens_and_lines_vs_rows():
    path = DATA / "bad_multiline_quote.csv"
    with pytest.raises(DataError) as err:
        read_file(path)
    assert str(err.value) == (
        f"{path}: the quoted field that opens on line 2 runs to line 4, where text follows its "
        "closing quote (',' expected after '\"'). Read with quotes, the file's 5 lines give 2 "
        'rows. If the " characters are part of the text, pass --quoting none; otherwise quote '
        'whole fields and double each " inside them ("he said ""hi"""); a quoted field that '
        "holds line breaks needs --quoting multiline."
    )


def test_quoting_none_reads_every_line_as_one_row():
    table = read_file(DATA / "bad_multiline_quote.csv", quoting="none")
    assert [(r["text"], r["label"]) for r in table.rows] == [
        ('"Best film ever', "1"),
        ("ok film", "0"),
        ('meh" she said', "0"),
        ("fine", "1"),
    ]
    assert table.lines == [2, 3, 4, 5]


def test_clean_multiline_field_needs_quoting_multiline(tmp_path):
    path = write(tmp_path / "m.csv", 'text,label\n"first line\nsecond line",1\nplain,0\n')
    with pytest.raises(DataError) as err:
        read_file(path)
    assert str(err.value) == (
        f"{path}: a quoted field opens on line 2 and runs over lines 2-3, so the file's 4 lines "
        'give 2 rows. If the " characters are part of the text, pass --quoting none; if quoted '
        "fields really hold line breaks, pass --quoting multiline."
    )
    table = read_file(path, quoting="multiline")
    assert [r["text"] for r in table.rows] == ["first line\nsecond line", "plain"]
    assert table.lines == [2, 4] and table.multiline_rows == 1 and table.line_count == 4


def test_quote_that_never_closes(tmp_path):
    path = write(tmp_path / "u.csv", 'text,label\n"never closed,1\nnext,0\n')
    with pytest.raises(DataError, match=r"quoted field that opens on line 2 never closes"):
        read_file(path, quoting="multiline")


def test_text_after_closing_quote_is_not_dropped_in_silence(tmp_path):
    # The csv module's lenient mode would read '"Best" film' as 'Best film'.
    path = write(tmp_path / "q.csv", 'text,label\n"Best" film,1\nok,0\n')
    with pytest.raises(DataError, match=r"line 2: text follows the closing quote.*--quoting none"):
        read_file(path)
    assert read_file(path, quoting="none").rows[0]["text"] == '"Best" film'


def test_quotes_inside_unquoted_csv_fields_and_doubled_quotes_read_as_written(tmp_path):
    path = write(tmp_path / "ok.csv", 'text,label\nhe said "hi",1\n"a, b ""c""",0\n')
    assert [r["text"] for r in read_file(path).rows] == ['he said "hi"', 'a, b "c"']


# Fault 6: errors with a cause.
def test_one_field_too_many():
    path = DATA / "bad_extra_field.tsv"
    with pytest.raises(DataError) as err:
        read_file(path)
    assert str(err.value) == (
        f"{path}: line 4 has 3 fields, the header has 2. Likely cause: a text holds a tab, or the "
        "header lacks a column name. Replace tabs inside texts with spaces, or complete the header."
    )


def test_missing_field_and_headerless_width(tmp_path):
    with pytest.raises(DataError, match=r"line 3 has 1 field, the header has 2.*field is missing"):
        read_file(write(tmp_path / "m.tsv", "text\tlabel\na\t1\nb\n"))
    with pytest.raises(DataError, match=r"line 2 has 2 fields, line 1 has 3"):
        read_file(write(tmp_path / "h.tsv", "a\t1\tx\nb\t0\n"), header=False)


def test_latin1_file_names_the_line():
    path = DATA / "bad_latin1.tsv"
    with pytest.raises(DataError) as err:
        read_file(path)
    assert str(err.value) == (
        f"{path}: line 2 is not UTF-8 (byte 0xe9 after 'caf'); re-save the file as UTF-8, e.g. "
        "iconv -f latin1 -t utf-8 if it was written as Latin-1 (Windows-1252)."
    )


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl", ".json"])
def test_not_utf8_in_every_text_format(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    path.write_bytes(b'{"text": "ok", "label": 1}\n{"text": "na\xefve", "label": 0}\n')
    with pytest.raises(
        DataError, match=r"line 2 is not UTF-8 \(byte 0xef after '\{\"text\": \"na'\)"
    ):
        read_file(path)


def test_utf16_file(tmp_path):
    path = tmp_path / "excel.tsv"
    path.write_bytes("text\tlabel\na\t1\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"is UTF-16 .* re-save it as UTF-8"):
        read_file(path)


def test_duplicate_header_names(tmp_path):
    with pytest.raises(DataError, match=r"names the column 'text' twice \(fields 1 and 3\)"):
        read_file(write(tmp_path / "d.tsv", "text\tlabel\ttext\na\t1\tb\n"))


def test_file_with_another_delimiter(tmp_path):
    with pytest.raises(DataError, match=r"header \(line 1\) is one field, 'text;label': .* by ';'"):
        read_file(write(tmp_path / "excel.csv", "text;label\na;1\nb;0\n"))
    with pytest.raises(DataError, match=r"seems delimited by ',', not '\\t'"):
        read_file(write(tmp_path / "comma.tsv", "text,label\na,1\n"))


def test_long_fields_read_whole(tmp_path):
    long = "word " * 40_000  # 200,000 characters: over the csv module's default field limit
    tsv = write(tmp_path / "l.tsv", f"text\tlabel\n{long}\t1\n")
    quoted = write(tmp_path / "l.csv", f'text,label\n"{long}",1\n')
    assert read_file(tsv).rows[0]["text"] == long
    assert read_file(quoted).rows[0]["text"] == long
    assert csv.field_size_limit() == 131072  # the limit is lifted only while reading


def test_duplicate_json_keys(tmp_path):
    with pytest.raises(DataError, match=r"line 2 has the key 'text' twice"):
        read_file(write(tmp_path / "d.jsonl", '{"text": "a"}\n{"text": "b", "text": "c"}\n'))
    with pytest.raises(DataError, match=r"an object has the key 'label' twice"):
        read_file(write(tmp_path / "d.json", '[{"text": "a", "label": 1, "label": 2}]'))


def test_repeated_header_from_joined_files(tmp_path):
    path = write(tmp_path / "j.tsv", "text\tlabel\na\t1\ntext\tlabel\nb\t0\n")
    with pytest.raises(DataError, match=r"line 3 repeats the header \(were files joined"):
        read_file(path)


def test_tsv_saved_with_csv_quotes_gets_a_note(tmp_path):
    # Spreadsheets save a text holding " as "he said ""hi""": read as written, with a note.
    path = write(tmp_path / "x.tsv", 'text\tlabel\n"he said ""hi"""\t1\nplain "quote"\t0\n')
    table = read_file(path)
    assert table.rows[0]["text"] == '"he said ""hi"""'
    assert table.notes == [
        '1 field looks quoted as in CSV ("..."" ...", first on line 2) and is read as written, '
        "quotes included; if the file was saved with quotes, pass --quoting csv (or multiline)"
    ]
    assert read_file(path, quoting="csv").rows[0]["text"] == 'he said "hi"'
    with pytest.raises(DataError, match=r"split the row.*pass --quoting multiline"):
        read_file(write(tmp_path / "m.tsv", 'text\tlabel\n"two\nlines"\t1\n'))


def test_blank_lines_are_skipped_and_counted(tmp_path):
    table = read_file(write(tmp_path / "b.tsv", "text\tlabel\r\na\t1\r\n\r\nb\t0\r\n\r\n"))
    assert [r["text"] for r in table.rows] == ["a", "b"]
    assert table.lines == [2, 4] and table.blank_lines == 2 and table.line_count == 5


def test_json_lines_errors_name_the_line(tmp_path):
    with pytest.raises(DataError, match=r"line 2 is not valid JSON \(Expecting .* at column"):
        read_file(
            write(tmp_path / "a.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label: 0}\n')
        )
    with pytest.raises(DataError, match=r"line 1 holds a JSON list, not an object"):
        read_file(write(tmp_path / "b.jsonl", '["a", 1]\n'))
    with pytest.raises(DataError, match=r"found a str that is none of these"):
        read_file(write(tmp_path / "c.json", '"just a string"'))


def test_json_forms_keep_values_as_written(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": "1.0"}, {"text": "c"}]
    expected = [{"text": "a", "label": 1}, {"text": "b", "label": "1.0"}, {"text": "c"}]
    as_lines = read_file(write(tmp_path / "l.jsonl", "\n".join(json.dumps(r) for r in rows)))
    assert as_lines.rows == expected and as_lines.lines == [1, 2, 3]
    assert as_lines.columns == ["text", "label"]
    as_array = read_file(write(tmp_path / "a.json", json.dumps(rows)))
    assert as_array.rows == expected and as_array.where(2) == "row 3"
    lines_named_json = read_file(write(tmp_path / "l.json", "\n".join(json.dumps(r) for r in rows)))
    assert lines_named_json.rows == expected
    columnar = read_file(
        write(tmp_path / "c.json", json.dumps({"text": ["a", "b"], "label": [1, 0]}))
    )
    assert columnar.rows == [{"text": "a", "label": 1}, {"text": "b", "label": 0}]


def test_compressed_files(tmp_path):
    path = tmp_path / "t.tsv.gz"
    path.write_bytes(gzip.compress(b"text\tlabel\na\t1\nb\t0\n"))
    assert [r["text"] for r in read_file(path).rows] == ["a", "b"]
    broken = tmp_path / "b.tsv.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"cannot decompress it as .gz"):
        read_file(broken)


def test_unknown_quoting_and_format(tmp_path):
    path = write(tmp_path / "t.tsv", "text\tlabel\na\t1\n")
    with pytest.raises(DataError, match=r"unknown quoting 'excel'; choose one of none, csv"):
        read_file(path, quoting="excel")
    with pytest.raises(DataError, match="unknown data format '.xml'"):
        read_file(write(tmp_path / "x.xml", "<a/>"))


# Clean files read as before: the same rows as pandas with quoting off (the former engine).
def _pandas_rows(path: Path) -> list[dict[str, str]]:
    import pandas as pd

    frame = pd.read_csv(
        path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, na_filter=False, encoding="utf-8-sig"
    )
    return frame.to_dict("records")


def test_clean_glue_style_file_reads_as_written():
    rows, columns = read_table(DATA / "clean_glue_style.tsv")
    assert columns == ["index", "sentence1", "sentence2", "label"]
    assert [r["sentence1"] for r in rows] == [
        'He said "hi" and left .',
        'The "best" film of 2001 , it \'s said .',
        '"Quoted at the start',
        "A trailing space ",
    ]
    assert rows[2]["sentence2"] == 'and "at the end"'
    assert rows[3]["sentence2"] == "A café , naïve , 東京 ."
    assert rows == _pandas_rows(DATA / "clean_glue_style.tsv")


def _clean_files() -> list[Path]:
    files = sorted(EXAMPLES.rglob("*.tsv")) + [DATA / "clean_trec_style.tsv"]
    if SHARED.is_dir():
        files += [p for p in sorted(SHARED.rglob("dev.tsv")) if "cola" not in str(p)]
    return files


@pytest.mark.parametrize("path", _clean_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_clean_files_read_as_pandas_reads_them(path):
    rows, _ = read_table(path)
    assert rows == _pandas_rows(path)


# Properties: whatever csv.writer writes, the reader reads back; TSV lines are rows as written.
_cell = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(st.tuples(_cell, _cell), min_size=1, max_size=6))
def test_property_csv_writer_round_trip(tmp_path, rows):
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)  # "\r\n" ends rows, so a field with \r or \n is quoted
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    path = write(tmp_path / "r.csv", buffer.getvalue())
    table = read_file(path, quoting="multiline")
    assert [(r["text"], r["label"]) for r in table.rows] == rows
    if not any(re.search(r"[\r\n]", a + b) for a, b in rows):  # one line each: default quoting
        assert read_file(path).rows == table.rows


_tsv_cell = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\r\n"))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(st.tuples(_tsv_cell, _tsv_cell), min_size=1, max_size=6))
def test_property_tsv_lines_are_rows(tmp_path, rows):
    text = "text\tlabel\n" + "".join(f"{a}\t{b}\n" for a, b in rows)
    table = read_file(write(tmp_path / "r.tsv", text))
    assert [(r["text"], r["label"]) for r in table.rows] == rows
    assert table.lines == list(range(2, len(rows) + 2))
