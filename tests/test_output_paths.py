"""Outputs that cannot be written fail at once with one line naming the path, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitfit_deploy._io import atomic_dir, atomic_file, check_output
from bitfit_deploy.cli import cli
from bitfit_deploy.errors import OutputExistsError, OutputPathError

# A path below tmp: each part a missing folder, an existing folder or an existing file.
parts = st.lists(st.sampled_from(["missing", "folder", "file"]), min_size=1, max_size=4)


def _layout(root: Path, kinds: list[str]) -> tuple[Path, bool]:
    """Make the parts that exist; return the path and whether a write there can succeed."""
    path, blocked = root, False
    for i, kind in enumerate(kinds):
        path = path / f"p{i}"
        last = i == len(kinds) - 1
        if kind == "folder" and not blocked and path.parent.is_dir():
            path.mkdir(exist_ok=True)
        elif kind == "file" and not blocked and path.parent.is_dir():
            path.write_bytes(b"user data")
            blocked |= not last  # a file with parts below it: nothing can be written there
        elif kind != "missing":
            pass  # below a missing folder or a file: stays missing
    return path, not blocked


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kinds=parts, folder=st.booleans(), force=st.booleans())
def test_atomic_outputs_fail_cleanly_and_leave_everything(tmp_path_factory, kinds, folder, force):
    root = tmp_path_factory.mktemp("out")
    path, writable = _layout(root, kinds)
    before = {p: (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}
    writer = atomic_dir if folder else atomic_file
    exists = path.exists()
    writable &= folder or not path.is_dir()  # a file never replaces a folder, even with force
    try:
        with writer(path, force=force) as tmp:
            (tmp / "a").write_text("1") if folder else tmp.write_bytes(b"new")
    except OutputExistsError:
        assert exists and not force
    except OutputPathError as exc:
        assert not writable and str(path) in str(exc)
        assert "is a file, not a folder" in str(exc) or "it is a folder" in str(exc)
    else:
        assert writable and (not exists or force)
        assert (path / "a").read_text() == "1" if folder else path.read_bytes() == b"new"
        return
    # A refused write changes nothing: no temp files, no new folders, the user's files intact.
    assert {p: (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")} == before


@pytest.mark.parametrize("place", ["/proc/x.json", "/sys/x.json", "/proc/deeper/x.json"])
def test_places_that_refuse_writes_are_found_before_any_work(place):
    """Permission bits do not tell (root may "write" in /proc): check_output tries a write."""
    with pytest.raises(OutputPathError, match=f"cannot write output '{place}'"):
        check_output(place, force=True)


def test_force_never_replaces_a_device_or_pipe(tmp_path):
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for place in ("/dev/null", str(fifo)):
        for writer in (atomic_file, atomic_dir):
            with (
                pytest.raises(OutputPathError, match="a device, pipe or socket"),
                writer(place, force=True),
            ):
                pass
    assert Path("/dev/null").is_char_device() and fifo.is_fifo()
    with pytest.raises(OutputPathError, match="path is empty"):
        check_output("", force=True)


def test_unwritable_places_name_the_path(tmp_path):
    with pytest.raises(OutputPathError, match="cannot write output file '/proc/x.json'"):  # noqa: SIM117
        with atomic_file("/proc/x.json"):
            pass
    (tmp_path / "afile").write_text("keep")
    with pytest.raises(OutputPathError, match="afile' is a file, not a folder"):
        check_output(tmp_path / "afile" / "deeper" / "b.safetensors", force=True)
    assert (tmp_path / "afile").read_text() == "keep"


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--task", "t", "--train", "{data}", "--model", "{no_model}", "-o", "{bad}/t.st"],
        ["train", "--task", "t", "--train", "{data}", "--model", "{no_model}", "-o", "/proc/t.st"],
        ["export", "--onnx", "--output", "{bad}/bundle"],
        ["merge", "--delta", "{delta}", "--output", "{bad}/merged"],
        [
            "eval",
            "--bundle",
            "{bundle}",
            "--task",
            "{delta}",
            "--data",
            "{data}",
            "-o",
            "{bad}/r.json",
        ],
    ],
    ids=["train", "train-proc", "export", "merge", "eval"],
)
def test_commands_refuse_a_bad_output_before_their_work(
    command, tiny_int8_bundle, tmp_path, toy_tsv, monkeypatch
):
    """One line naming the path, before any model is loaded (loading one here would fail)."""
    from runtime_fixtures import synthetic_delta

    import bitfit_deploy.merge
    from bitfit_deploy.delta import save_delta
    from bitfit_deploy.exporters import bundle as exporter
    from bitfit_deploy.manifest import read_manifest

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(exporter, "load_encoder", no_model)
    monkeypatch.setattr(bitfit_deploy.merge, "load_encoder", no_model)
    bad = tmp_path / "afile"
    bad.write_text("keep")
    delta = synthetic_delta(read_manifest(tiny_int8_bundle), "t")
    values = {
        "data": str(toy_tsv(16)),
        "bad": str(bad),
        "delta": str(save_delta(delta, tmp_path / "t.safetensors")),
        "bundle": str(tiny_int8_bundle),
        "no_model": str(tmp_path / "no-model-here"),
    }
    result = CliRunner().invoke(cli, [a.format(**values) for a in command])
    assert result.exit_code == 1, result.output
    assert "OutputPathError" in result.output
    assert "afile' is a file, not a folder" in result.output or "'/proc/t.st'" in result.output
    assert bad.read_text() == "keep"
