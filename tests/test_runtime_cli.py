"""`bitfit-deploy predict`: JSON lines for TEXT arguments and --input files, errors as exit messages."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
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
    delta = save_delta(
        synthetic_delta(read_manifest(root / "b"), "mood", seed=3), root / "mood.safetensors"
    )
    return root / "b", delta


def _lines(output):
    return [json.loads(line) for line in output.strip().splitlines()]


def test_predict_texts_and_input_file(setup, tmp_path):
    bundle, delta = setup
    (tmp_path / "in.txt").write_text(f"first line\n\nthe premise\tthe hypothesis\n{LONG_TEXT}\n")
    result = CliRunner().invoke(
        cli,
        [
            "predict",
            "--bundle",
            str(bundle),
            "--task",
            "mood",
            "--delta",
            str(delta),
            "--input",
            str(tmp_path / "in.txt"),
            "an argument",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = _lines(result.output)
    rt = Runtime(bundle)
    rt.load_task(delta)
    want = rt.predict(
        "mood", ["an argument", "first line", ("the premise", "the hypothesis"), LONG_TEXT]
    )
    assert rows == [p.to_dict() for p in want]
    assert [r["truncated"] for r in rows] == [False, False, False, True]


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
