"""The delta file format: round trip, golden header bytes, and every kind of bad file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitfit_deploy.delta import (
    FORMAT_NAME,
    DeltaMetadata,
    TaskDelta,
    check_delta_fits,
    from_bytes,
    load_delta,
    save_delta,
    to_bytes,
)
from bitfit_deploy.errors import (
    DeltaFormatError,
    FingerprintMismatchError,
    IncompatibleTaskError,
    OutputExistsError,
)


def make_delta(
    num_labels: int = 2, problem_type: str = "single_label", hidden: int = 4
) -> TaskDelta:
    labels = ["value"] if problem_type == "regression" else [f"l{i}" for i in range(num_labels)]
    n = 1 if problem_type == "regression" else num_labels
    meta = DeltaMetadata(
        task="demo",
        base_fingerprint="sha256:abc",
        problem_type=problem_type,
        labels=labels,
        pooling="mean",
        created="2026-01-01T00:00:00+00:00",
        metrics={"accuracy": 0.5},
    )
    biases = {"encoder.layer.0.attention.self.query.bias": np.arange(hidden, dtype=np.float32)}
    return TaskDelta(meta, biases, np.ones((n, hidden), np.float32), np.zeros(n, np.float32))


def test_round_trip(tmp_path):
    delta = make_delta(3)
    path = save_delta(delta, tmp_path / "t.safetensors")
    back = load_delta(path)
    assert back.metadata == delta.metadata
    assert back.num_labels == 3
    for key, value in delta.tensors().items():
        np.testing.assert_array_equal(back.tensors()[key], value)


def test_golden_header():
    """The header layout is a contract other tools read: pin its bytes."""
    data = to_bytes(make_delta())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    assert header["__metadata__"] == {
        "task": "demo",
        "base_fingerprint": "sha256:abc",
        "problem_type": "single_label",
        "labels": '["l0", "l1"]',
        "pooling": "mean",
        "base_model": "",
        "architecture": "",
        "bias_selection": "all",
        "max_length": "128",
        "inputs": "unknown",
        "metrics": '{"accuracy": 0.5}',
        "training": "{}",
        "created": "2026-01-01T00:00:00+00:00",
        "format": FORMAT_NAME,
        "format_version": "1",
        "tool_version": "0.1.0",
    }
    assert header["head.weight"] == {"dtype": "F32", "shape": [2, 4], "data_offsets": [24, 56]}
    assert sorted(k for k in header if k != "__metadata__") == [
        "encoder.layer.0.attention.self.query.bias",
        "head.bias",
        "head.weight",
    ]


def test_existing_file_needs_force(tmp_path):
    path = tmp_path / "t.safetensors"
    save_delta(make_delta(), path)
    with pytest.raises(OutputExistsError, match="--force"):
        save_delta(make_delta(3), path)
    save_delta(make_delta(3), path, force=True)
    assert load_delta(path).num_labels == 3


def test_truncated_file(tmp_path):
    data = to_bytes(make_delta())
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) - 10])
    with pytest.raises(DeltaFormatError, match="truncated or corrupt"):
        load_delta(path)


def test_garbage_and_missing_file(tmp_path):
    with pytest.raises(DeltaFormatError, match="not a readable safetensors"):
        from_bytes(b"\x00" * 3)
    with pytest.raises(DeltaFormatError, match="cannot read delta"):
        load_delta(tmp_path / "nope.safetensors")


def test_not_a_delta():
    from safetensors.numpy import save

    data = save({"x": np.zeros(2, np.float32)}, metadata={"format": "pt"})
    with pytest.raises(DeltaFormatError, match="not a bitfit-deploy delta"):
        from_bytes(data)


def test_nan_rejected():
    delta = make_delta()
    delta.head_bias[0] = np.nan
    with pytest.raises(DeltaFormatError, match="NaN"):
        to_bytes(delta)


def test_wrong_head_shape():
    delta = make_delta()
    delta.head_bias = np.zeros(5, np.float32)
    with pytest.raises(DeltaFormatError, match="head shapes"):
        to_bytes(delta)


def test_labels_must_match_head():
    delta = make_delta()
    delta.metadata.labels = ["only-one"]
    with pytest.raises(DeltaFormatError, match="1 labels"):
        to_bytes(delta)


def test_newer_version_refused():
    data = to_bytes(make_delta())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"]["format_version"] = "99"
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with pytest.raises(DeltaFormatError, match="upgrade bitfit-deploy"):
        from_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])


def with_metadata(data: bytes, **changes: str | None) -> bytes:
    """The delta bytes with metadata keys replaced (None removes the key)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    for key, value in changes.items():
        if value is None:
            header["__metadata__"].pop(key)
        else:
            header["__metadata__"][key] = value
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + n :]


@pytest.mark.parametrize(
    ("training", "inputs"),
    [
        ({"columns": {"text": "premise", "pair": "hypothesis", "label": "label"}}, "pair"),
        ({"columns": {"text": "sentence", "pair": None, "label": "label"}}, "single"),
        ({"epochs": 1}, "unknown"),
        ({}, "unknown"),
    ],
)
def test_an_older_delta_without_inputs_reads_them_from_its_training_columns(training, inputs):
    data = with_metadata(to_bytes(make_delta()), inputs=None, training=json.dumps(training))
    assert from_bytes(data).metadata.inputs == inputs


def test_a_recorded_arity_survives_the_round_trip():
    delta = make_delta()
    delta.metadata.inputs = "pair"
    assert from_bytes(to_bytes(delta)).metadata.inputs == "pair"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("inputs", "triple", "'inputs' is 'triple'"),
        ("max_length", "0", "'max_length' is 0"),
        ("max_length", '"128"', "'max_length' is \"128\", not int"),
        ("max_length", "true", "'max_length' is true, not int"),
    ],
)
def test_a_bad_arity_or_max_length_is_refused(key, value, message):
    with pytest.raises(DeltaFormatError, match=message):
        from_bytes(with_metadata(to_bytes(make_delta()), **{key: value}))


@given(labels=st.lists(st.sampled_from(["a", "b", "", " ", "c"]), min_size=2, max_size=2))
def test_labels_edited_to_repeat_or_be_empty_are_refused(labels):
    """Hand-edited labels ["a", "a"] were read, and each answer's scores (keyed by label) lost
    one output without a word; an empty label made the key ""."""
    data = with_metadata(to_bytes(make_delta()), labels=json.dumps(labels))
    if len(set(labels)) < len(labels) or any(not x.strip() for x in labels):
        with pytest.raises(DeltaFormatError, match="metadata 'labels'"):
            from_bytes(data)
    else:
        assert from_bytes(data).metadata.labels == labels


def test_regression_delta_has_one_output():
    delta = make_delta(problem_type="regression")
    assert from_bytes(to_bytes(delta)).num_labels == 1


def test_check_delta_fits():
    delta = make_delta()
    dims = {"encoder.layer.0.attention.self.query.bias": 4}
    check_delta_fits(delta, "sha256:abc", "mean", dims, 4)
    with pytest.raises(FingerprintMismatchError, match="sha256:abc.*sha256:other"):
        check_delta_fits(delta, "sha256:other", "mean", dims, 4)
    with pytest.raises(IncompatibleTaskError, match="pools with 'mean'"):
        check_delta_fits(delta, "sha256:abc", "cls", dims, 4)
    with pytest.raises(IncompatibleTaskError, match="not an input"):
        check_delta_fits(delta, "sha256:abc", "mean", {}, 4)
    with pytest.raises(IncompatibleTaskError, match="shape"):
        check_delta_fits(
            delta, "sha256:abc", "mean", {"encoder.layer.0.attention.self.query.bias": 8}, 4
        )
    with pytest.raises(IncompatibleTaskError, match="hidden size"):
        check_delta_fits(delta, "sha256:abc", "mean", dims, 8)


json_texts = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**12) | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
).map(json.dumps)


@settings(max_examples=150, deadline=None)
@given(
    key=st.sampled_from(list(DeltaMetadata.__dataclass_fields__)),
    raw=json_texts | st.text(max_size=8),
)
def test_damaged_metadata_is_one_error_or_a_usable_delta(tmp_path_factory, key, raw):
    """Any value at any metadata key: a DeltaFormatError naming the file, or a delta that
    `inspect` shows and whose metadata fits its declared types."""
    from click.testing import CliRunner

    from bitfit_deploy.cli import cli
    from bitfit_deploy.json_fields import mismatch

    data = with_metadata(to_bytes(make_delta()), **{key: raw})
    try:
        delta = from_bytes(data, source="d.safetensors")
    except DeltaFormatError as exc:
        assert "d.safetensors" in str(exc)
        return
    assert mismatch(DeltaMetadata, vars(delta.metadata)) is None
    path = tmp_path_factory.mktemp("meta") / "d.safetensors"
    path.write_bytes(data)
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0 and result.exception is None, result.output
