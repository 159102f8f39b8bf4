"""Bad input to the runtime: each fails with a typed error that says what to do; loaded tasks keep serving."""

from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from odd_values import ODD_VALUES
from runtime_fixtures import SENTENCES, synthetic_delta

from bitfit_deploy.delta import save_delta, to_bytes
from bitfit_deploy.errors import (
    BundleError,
    DeltaFormatError,
    FingerprintMismatchError,
    IncompatibleTaskError,
    InvalidInputError,
    ProviderUnavailableError,
    TaskExistsError,
    TaskNotFoundError,
)
from bitfit_deploy.manifest import read_manifest
from bitfit_deploy.runtime import Runtime


@pytest.fixture(scope="module")
def bundle(tiny_bert, tmp_path_factory):
    from bitfit_deploy.exporters.bundle import export_bundle

    out = tmp_path_factory.mktemp("rt-err") / "bundle"
    export_bundle(out, model=str(tiny_bert))
    return out


@pytest.fixture
def runtime(bundle, tmp_path):
    rt = Runtime(bundle, threads=1)
    manifest = read_manifest(bundle)
    rt.load_task(
        save_delta(synthetic_delta(manifest, "alpha", seed=1), tmp_path / "alpha.safetensors")
    )
    rt.load_task(
        save_delta(synthetic_delta(manifest, "beta", seed=2), tmp_path / "beta.safetensors")
    )
    return rt


def _still_serving(rt, before):
    assert set(rt.tasks) == {"alpha", "beta"}
    assert rt.predict("alpha", SENTENCES[:2]) == before


def test_unknown_task_lists_loaded_ones(runtime):
    with pytest.raises(TaskNotFoundError, match=r"'gamma' is not loaded \(loaded: alpha, beta\)"):
        runtime.predict("gamma", ["hi"])
    with pytest.raises(TaskNotFoundError, match="alpha, beta"):
        runtime.predict_mixed([("alpha", "ok"), ("gamma", "hi")])
    with pytest.raises(TaskNotFoundError):
        runtime.validate_input("gamma", "hi")
    with pytest.raises(TaskNotFoundError, match="not loaded"):
        runtime.unload_task("gamma")
    with pytest.raises(TaskNotFoundError, match="loaded: alpha, beta"):
        runtime.predict_mixed([(["not", "a", "name"], "hi")])


@pytest.mark.parametrize("inputs", [[], ()])
def test_empty_input_list(runtime, inputs):
    with pytest.raises(InvalidInputError, match="at least one"):
        runtime.predict("alpha", inputs)
    with pytest.raises(InvalidInputError, match="at least one"):
        runtime.predict_mixed(inputs)


@pytest.mark.parametrize(
    "item", [3, None, b"bytes", {"text": "x"}, ("a", "b", "c"), ("a", 2), ["only one"]]
)
def test_non_string_input(runtime, item):
    with pytest.raises(InvalidInputError, match="text or a \\(text, text_pair\\) pair"):
        runtime.predict("alpha", ["fine", item])
    with pytest.raises(InvalidInputError):
        runtime.validate_input("alpha", item)


def test_a_single_string_is_not_an_input_list(runtime):
    with pytest.raises(InvalidInputError, match="list of texts"):
        runtime.predict("alpha", "a bare string")


def test_any_ordered_iterable_of_inputs_is_taken_a_set_or_dict_is_not(runtime):
    import numpy as np

    want = [p.scores for p in runtime.predict("alpha", SENTENCES[:3])]
    for inputs in (iter(SENTENCES[:3]), (s for s in SENTENCES[:3]), np.array(SENTENCES[:3])):
        assert [p.scores for p in runtime.predict("alpha", inputs)] == want
    mixed = runtime.predict_mixed(("alpha", s) for s in SENTENCES[:3])
    assert [p.scores for p in mixed] == want
    for unordered in (set(SENTENCES[:3]), dict.fromkeys(SENTENCES[:3]), 7, np.array("one")):
        with pytest.raises(InvalidInputError, match="pass a list of texts"):
            runtime.predict("alpha", unordered)


def test_foreign_fingerprint_names_both(runtime, bundle, tmp_path):
    before = runtime.predict("alpha", SENTENCES[:2])
    manifest = read_manifest(bundle)
    foreign = "sha256:" + "ab" * 32
    path = save_delta(
        synthetic_delta(manifest, "gamma", fingerprint=foreign), tmp_path / "g.safetensors"
    )
    with pytest.raises(FingerprintMismatchError) as info:
        runtime.load_task(path)
    assert foreign in str(info.value) and manifest.base_fingerprint in str(info.value)
    _still_serving(runtime, before)


def test_other_pooling_is_incompatible(runtime, bundle):
    before = runtime.predict("alpha", SENTENCES[:2])
    delta = synthetic_delta(read_manifest(bundle), "gamma")
    delta.metadata.pooling = "mean" if delta.metadata.pooling != "mean" else "cls"
    with pytest.raises(IncompatibleTaskError, match="pools with"):
        runtime.load_task_bytes(to_bytes(delta))
    _still_serving(runtime, before)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_or_truncated_delta(runtime, bundle, tmp_path, damage):
    before = runtime.predict("alpha", SENTENCES[:2])
    data = to_bytes(synthetic_delta(read_manifest(bundle), "gamma"))
    bad = {"truncated": data[: len(data) // 2], "garbage": b"\x07not a delta" * 50, "empty": b""}[
        damage
    ]
    (tmp_path / "bad.safetensors").write_bytes(bad)
    with pytest.raises(DeltaFormatError, match="truncated or corrupt"):
        runtime.load_task(tmp_path / "bad.safetensors")
    with pytest.raises(DeltaFormatError):
        runtime.load_task_bytes(bad, name="gamma")
    _still_serving(runtime, before)


def test_missing_delta_file(runtime, tmp_path):
    with pytest.raises(DeltaFormatError, match="cannot read delta"):
        runtime.load_task(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("value", [None, 3, b"bytes", ["a.safetensors"]])
def test_load_task_takes_a_path_and_load_task_bytes_bytes(runtime, value):
    if not isinstance(value, bytes):
        with pytest.raises(InvalidInputError, match="load_task takes the path of a delta file"):
            runtime.load_task(value)
    if not isinstance(value, bytes):
        with pytest.raises(InvalidInputError, match="load_task_bytes takes a delta file's bytes"):
            runtime.load_task_bytes(value, name="x")
    with pytest.raises(InvalidInputError, match="load_task_bytes takes a delta file's bytes"):
        runtime.load_task_bytes("a delta.safetensors", name="x")


def test_existing_name_needs_replace(runtime, bundle):
    before = runtime.predict("alpha", SENTENCES[:2])
    other = to_bytes(synthetic_delta(read_manifest(bundle), "alpha", seed=9))
    with pytest.raises(TaskExistsError, match="replace=True"):
        runtime.load_task_bytes(other)
    _still_serving(runtime, before)
    assert runtime.load_task_bytes(other, replace=True) == "alpha"
    assert runtime.predict("alpha", SENTENCES[:2]) != before


def test_load_under_another_name(runtime, bundle):
    data = to_bytes(synthetic_delta(read_manifest(bundle), "alpha", seed=1))
    assert runtime.load_task_bytes(data, name="alpha-copy") == "alpha-copy"
    a, b = (
        runtime.predict("alpha", SENTENCES[:1])[0],
        runtime.predict("alpha-copy", SENTENCES[:1])[0],
    )
    assert (b.task, b.scores) == ("alpha-copy", a.scores)
    with pytest.raises(InvalidInputError, match="1-128 letters"):
        runtime.load_task_bytes(data, name=" ")


def test_missing_variant(bundle):
    with pytest.raises(BundleError, match="no 'int8' graph"):
        Runtime(bundle, variant="int8")


def test_modified_bundle_is_refused(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    with open(copy / "base.safetensors", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match="sha256"):
        Runtime(copy)


def test_cuda_unavailable_is_clear(bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(ProviderUnavailableError, match="onnxruntime-gpu"):
        Runtime(bundle, provider="cuda")
    with pytest.raises(ProviderUnavailableError, match="unknown provider"):
        Runtime(bundle, provider="tpu")


def test_bad_batch_size(bundle):
    with pytest.raises(InvalidInputError, match="max_batch_size"):
        Runtime(bundle, max_batch_size=0)


@pytest.mark.parametrize("max_length", [1, 2, 4])
def test_a_bundle_too_short_for_its_tokenizer_is_refused(bundle, tmp_path, max_length):
    """Below a pair's special tokens plus a token of each text the tokenizer cuts nothing, and
    long inputs would run past the positions (an ONNX Runtime traceback): refused at open."""
    import json

    from click.testing import CliRunner

    from bitfit_deploy.cli import cli

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["max_length"] = max_length
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"max_length {max_length} is below 5"):
        Runtime(copy, threads=1)
    verified = CliRunner().invoke(cli, ["verify", str(copy)])
    assert verified.exit_code != 0 and f"max_length {max_length} is below 5" in verified.output


def test_the_tokenizer_never_feeds_more_than_the_max_length(bundle):
    """Should truncation not apply, padding refuses rather than run past the graph's positions."""
    from bitfit_deploy.runtime.tokenize import BundleTokenizer

    tokenizer = BundleTokenizer(bundle / "tokenizer.json", 1, 0, ["input_ids"])
    rows = tokenizer.encode(["word " * 300])
    with pytest.raises(BundleError, match="more than the bundle's max length 1"):
        tokenizer.pad(rows)


ARGUMENTS = {  # argument -> what it accepts
    "threads": lambda v: v is None or (type(v) is int and 1 <= v <= 4096),
    "max_batch_size": lambda v: type(v) is int and 1 <= v <= 65536,
    "provider": lambda v: v == "cpu",
    "variant": lambda v: v == "fp32",
    "verify": lambda v: v in ("cached", "loaded", "full"),
    "parallel": lambda v: v in ("auto", "ops", "rows"),
    "load_bundle_tasks": lambda v: isinstance(v, bool),
    "spin_wait": lambda v: isinstance(v, bool),
    "check_int8_ranges": lambda v: isinstance(v, bool),
    "io_binding": lambda v: v is None or isinstance(v, bool),
}


@settings(max_examples=80, deadline=None)
@given(argument=st.sampled_from(sorted(ARGUMENTS)), value=ODD_VALUES)
def test_a_runtime_argument_of_the_wrong_type_or_range_is_named(bundle, argument, value):
    """`threads="2"`, `threads=2.5` or `max_batch_size="8"` were TypeErrors from deep inside
    (one a pybind dump); `threads=True` ran one thread. Each is now an InvalidInputError naming
    the argument; values it accepts still open."""
    if ARGUMENTS[argument](value):
        if argument in ("threads", "max_batch_size") and value is not None and value > 4:
            return  # accepted; opening with thousands of threads proves nothing more
        Runtime(bundle, **{"threads": 1, argument: value})
        return
    with pytest.raises((InvalidInputError, ProviderUnavailableError, BundleError)) as caught:
        Runtime(bundle, **{argument: value})
    assert argument in str(caught.value) or isinstance(caught.value, ProviderUnavailableError)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=st.one_of(ODD_VALUES, st.floats(min_value=0, max_value=5)))
def test_method_arguments_are_checked_too(runtime, tmp_path_factory, value):
    """wait_for_int8_checks(timeout="1") was a raw TypeError; load_task(replace="no") replaced."""
    accepted = value is None or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e308
    )
    if accepted:
        assert runtime.wait_for_int8_checks(timeout=min(value or 0, 0.01)) is True
    else:
        with pytest.raises(InvalidInputError, match="timeout must be a number of seconds"):
            runtime.wait_for_int8_checks(timeout=value)
    if not isinstance(value, bool):
        path = tmp_path_factory.mktemp("d") / "alpha.safetensors"
        save_delta(synthetic_delta(read_manifest(runtime.bundle_dir), "alpha", seed=1), path)
        with pytest.raises(InvalidInputError, match="replace must be True or False"):
            runtime.load_task(path, replace=value)


def test_numpy_integers_and_paths_are_taken_where_ints_and_paths_are(bundle, tmp_path):
    """threads=np.int64(1) was refused as 'an array of shape ()' (and ORT takes only ints);
    Runtime(None) or Runtime(123) was a TypeError from pathlib."""
    import numpy as np

    rt = Runtime(str(bundle), threads=np.int64(1), max_batch_size=np.int32(4))
    assert rt.max_batch_size == 4 and type(rt.max_batch_size) is int
    for odd in (None, 123, b"bundle", 2.5):
        with pytest.raises(InvalidInputError, match="bundle_dir must be a path"):
            Runtime(odd)


def test_create_app_checks_the_runtime_and_the_limits(bundle):
    from bitfit_deploy.runtime.server import Limits, create_app

    rt = Runtime(bundle, threads=1)
    with pytest.raises(InvalidInputError, match="runtime must be a bitfit_deploy.runtime.Runtime"):
        create_app("bundle")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="limits must be a Limits"):
        create_app(rt, limits={"max_inputs": 5})  # type: ignore[arg-type]
    for field, value in (("max_inputs", "5"), ("max_inputs", 0), ("max_body_bytes", -1)):
        with pytest.raises(InvalidInputError, match=f"Limits.{field}"):
            Limits(**{field: value})
    for field, value in (("drain_timeout_s", float("nan")), ("body_timeout_s", -1)):
        with pytest.raises(InvalidInputError, match=f"Limits.{field}"):
            Limits(**{field: value})
