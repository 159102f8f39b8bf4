"""`bitfit-deploy predict`: JSON lines for TEXT arguments and --input files, errors as exit messages."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_fixtures import LONG_TEXT, synthetic_delta

from bitfit_deploy.cli import cli
from bitfit_deploy.delta import save_delta
from bitfit_deploy.manifest import read_manifest
from bitfit_deploy.runtime import Runtime


@pytest.fixture(scope="module")
def setup(tiny_bert, tmp_path_factory):
    from bitfit_deploy.exporters.bundle import export_bundle

    root = tmp_path_factory.mktemp("cli")
    export_bundle(root / "b", model=str(tiny_bert))
    manifest = read_manifest(root / "b")
    delta = save_delta(synthetic_delta(manifest, "mood", seed=3), root / "mood.safetensors")
    for name, inputs in (("single", "single"), ("pair", "pair")):
        task = synthetic_delta(manifest, name, seed=4)
        task.metadata.inputs = inputs
        save_delta(task, root / f"{name}.safetensors")
    return root / "b", delta


def _lines(output):
    return [json.loads(line) for line in output.strip().splitlines()]


def predict(setup, task, *args):
    """Run `predict` for `task` (loaded from its delta file); return the result."""
    bundle, delta = setup
    path = delta.parent / f"{task}.safetensors"
    command = ["predict", "--bundle", str(bundle), "--task", task, "--delta", str(path), *args]
    return CliRunner().invoke(cli, command)


def runtime_for(setup, task):
    bundle, delta = setup
    rt = Runtime(bundle)
    rt.load_task(delta.parent / f"{task}.safetensors")
    return rt


def test_predict_texts_and_input_file(setup, tmp_path):
    (tmp_path / "in.txt").write_text(f"first line\nthe premise\tthe hypothesis\n{LONG_TEXT}\n")
    result = predict(setup, "mood", "--input", str(tmp_path / "in.txt"), "an argument")
    assert result.exit_code == 0, result.output
    rows = _lines(result.stdout)
    want = runtime_for(setup, "mood").predict(
        "mood", ["an argument", "first line", "the premise\tthe hypothesis", LONG_TEXT]
    )
    assert rows == [p.to_dict() for p in want]
    assert [r["truncated"] for r in rows] == [False, False, False, True]


def test_output_line_n_answers_input_line_n_and_a_tab_is_text_for_a_single_text_task(
    setup, tmp_path
):
    lines = [
        b"first line",
        b"",
        b"tab\tinside",
        b"   ",
        b"caf\xe9 in latin-1",
        "form\x0cfeed and\u2028line separator".encode(),
        b"windows line\r",
        LONG_TEXT.encode(),
    ]
    (tmp_path / "in.txt").write_bytes(b"\n".join(lines))  # no final newline
    result = predict(setup, "single", "--input", str(tmp_path / "in.txt"), "an argument")
    rows = _lines(result.stdout)
    assert len(rows) == 1 + len(lines)
    errors = {i: r for i, r in enumerate(rows) if "error" in r}
    assert {i: (r.get("line"), r["error"]) for i, r in errors.items()} == {
        2: (2, "invalid_input"),
        4: (4, "invalid_input"),
        5: (5, "invalid_input"),
    }
    assert "line 2 is empty" in errors[2]["detail"] and "not UTF-8" in errors[5]["detail"]
    texts = [
        "an argument",
        "first line",
        "tab\tinside",
        lines[5].decode(),
        "windows line",
        LONG_TEXT,
    ]
    want = runtime_for(setup, "single").predict("single", texts)
    assert [r for r in rows if "error" not in r] == [p.to_dict() for p in want]
    assert result.exit_code == 1 and "3 of 9 inputs could not be predicted" in result.stderr


def test_a_pair_task_reads_text_tab_text_pair_and_refuses_a_line_without_one_tab(setup, tmp_path):
    (tmp_path / "in.txt").write_text("a premise\ta hypothesis\nno tab here\na\tb\tc\nx\ty\n")
    result = predict(setup, "pair", "--input", str(tmp_path / "in.txt"), "an argument")
    rows = _lines(result.stdout)
    assert rows[0] == {"argument": 1, "error": "invalid_input", "detail": rows[0]["detail"]}
    assert "has no tab" in rows[0]["detail"] and rows[2]["line"] == 2
    assert rows[3]["line"] == 3 and "has 2 tabs" in rows[3]["detail"]  # not ("a", "b\tc")
    want = runtime_for(setup, "pair").predict("pair", [("a premise", "a hypothesis"), ("x", "y")])
    assert [rows[1], rows[4]] == [p.to_dict() for p in want]
    assert result.exit_code == 1


TEXTS = st.text(alphabet=st.sampled_from("ab \t\u3000\u00a0"), max_size=4)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts=st.lists(st.tuples(TEXTS, TEXTS), min_size=1, max_size=5))
def test_every_input_form_refuses_an_empty_or_blank_text_alike(setup, texts):
    """A blank text (or text_pair) is an error line in arguments, text lines and JSON lines
    alike; it was refused in arguments and text lines but predicted from JSONL and pair lines."""
    from bitfit_deploy.commands._inputs import read_rows, text_row

    for a, b in texts:
        line = f"{a}\t{b}"
        rows = [
            text_row("argument", 1, line, "pair"),
            *read_rows([line.encode()], "text", "pair"),
            *read_rows([json.dumps({"text": a, "text_pair": b}).encode()], "jsonl", "pair"),
        ]
        blank = not a.strip() or not b.strip()
        many_tabs = "\t" in a or "\t" in b
        for row in rows[2:] if many_tabs else rows:  # JSONL texts may hold tabs
            assert (row.error is not None) == blank, (row, a, b)
            if not blank:
                assert row.item == (a, b)
        for row in rows[:2] if many_tabs else []:  # not one tab, or blank altogether
            assert row.error is not None and ("tabs" in row.error or not line.strip())
        singles = [
            text_row("argument", 1, a, "single"),
            *read_rows([json.dumps(a).encode()], "jsonl", "single"),
        ]
        assert all((r.error is not None) == (not a.strip()) for r in singles)


def test_jsonl_input_gives_pairs_by_field_and_keeps_the_line_mapping(setup, tmp_path):
    lines = [
        {"text": "a premise", "text_pair": "a hypothesis"},
        "just one text",
        "{not json",
        {"text": 3},
        "",
        {"text": "x", "text_pair": None},
        {"text": "y", "text_pair": ["z"]},
    ]
    body = "\n".join(x if x in ("{not json", "") else json.dumps(x) for x in lines)
    (tmp_path / "in.jsonl").write_text(body + "\n")
    rows = _lines(predict(setup, "pair", "--input", str(tmp_path / "in.jsonl")).stdout)
    assert [("error" in r) for r in rows] == [False, True, True, True, True, True, True]
    details = [r.get("detail", "") for r in rows]
    assert "input 2 for task 'pair' is one text" in details[1]
    assert "line 3 is not JSON" in details[2] and "must be a JSON object" in details[3]
    assert "line 5 is empty" in details[4] and "'text_pair' that is not a string" in details[6]
    want = runtime_for(setup, "pair").predict("pair", [("a premise", "a hypothesis")])
    assert rows[0] == want[0].to_dict()

    (tmp_path / "one.txt").write_text(json.dumps(lines[0]) + "\n")
    single = predict(
        setup, "single", "--input", str(tmp_path / "one.txt"), "--input-format", "jsonl"
    )
    assert (
        "is a pair, but the task was trained on single texts" in _lines(single.stdout)[0]["detail"]
    )


def test_predict_errors_are_messages(setup):
    bundle, delta = setup
    runner = CliRunner()
    unknown = runner.invoke(cli, ["predict", "--bundle", str(bundle), "--task", "nope", "hello"])
    assert (
        unknown.exit_code == 1
        and "TaskNotFoundError" in unknown.output
        and "loaded: none" in unknown.output
    )
    empty = runner.invoke(
        cli, ["predict", "--bundle", str(bundle), "--task", "mood", "--delta", str(delta)]
    )
    assert empty.exit_code == 1 and "nothing to predict" in empty.output


@pytest.mark.parametrize("parallel", ["ops", "rows"])
def test_predict_parallel_modes_answer_alike(setup, tmp_path, parallel):
    texts = ["an argument", "first line", LONG_TEXT, "bad", "a gorgeous , witty movie"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    args = ["--input", str(tmp_path / "in.txt"), "--threads", "2", "--parallel", parallel]
    result = predict(setup, "mood", *args)
    assert result.exit_code == 0, result.output
    want = runtime_for(setup, "mood").predict("mood", texts)
    got = _lines(result.stdout)
    assert [r["label"] for r in got] == [p.label for p in want]
    for row, p in zip(got, want, strict=True):
        assert max(abs(row["scores"][k] - v) for k, v in p.scores.items()) <= 1e-6


def test_predict_refuses_an_unknown_parallel_mode(setup):
    result = predict(setup, "mood", "--parallel", "cores", "hello")
    assert result.exit_code == 2 and "'cores' is not one of 'auto', 'ops', 'rows'" in result.output


@pytest.mark.parametrize("name", ["in.JSONL", "in.json", "in.ndjson", "in.Jsonl", "in.txt"])
def test_json_lines_are_read_as_such_by_name_in_any_case_or_by_content(setup, tmp_path, name):
    """`x.JSONL`, `x.json` and `x.ndjson` were read as text: the raw JSON line was scored as a
    sentence, silently. A file (or stdin) whose every line is a JSON object with a "text" reads
    as JSON lines too, and says so."""
    (tmp_path / name).write_text('{"text": "good"}\n{"text": "a dull film"}\n')
    result = predict(setup, "single", "--input", str(tmp_path / name))
    want = runtime_for(setup, "single").predict("single", ["good", "a dull film"])
    assert _lines(result.stdout) == [p.to_dict() for p in want]
    assert ("reading --input as JSON lines" in result.stderr) == (name == "in.txt")
    plain = predict(setup, "single", "--input", str(tmp_path / name), "--input-format", "text")
    assert _lines(plain.stdout)[0] != want[0].to_dict()


@settings(max_examples=40, deadline=None)
@given(lines=st.lists(st.text(max_size=12), min_size=1, max_size=4))
def test_a_plain_text_file_is_never_guessed_as_json_lines(lines):
    """Only lines that are all JSON objects with a "text" read as JSON lines."""
    from bitfit_deploy.commands._inputs import guess_format

    raw = [line.replace("\n", " ").encode("utf-8", "surrogatepass") for line in lines]
    with_bom = [b"\xef\xbb\xbf" + raw[0], *raw[1:]]  # a BOM (Windows editors) changes nothing
    assert guess_format("in.txt", with_bom) == guess_format("in.txt", raw)
    every_object = all(
        not r.strip() or (r.lstrip().startswith(b"{") and _is_text_object(r)) for r in raw
    ) and any(r.strip() for r in raw)
    assert guess_format("in.txt", raw) == ("jsonl" if every_object else "text")


def _is_text_object(raw: bytes) -> bool:
    try:
        value = json.loads(raw)
    except ValueError:
        return False
    return isinstance(value, dict) and "text" in value
