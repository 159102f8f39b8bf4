"""A damaged or edited manifest.json (it holds the checksums, so nothing else guards it) gives one
BundleError naming it, from `read_manifest`, `verify` and the runtime alike: never a traceback."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_fixtures import synthetic_delta

from bitfit_deploy.cli import cli
from bitfit_deploy.delta import save_delta
from bitfit_deploy.errors import BitFitError, BundleError
from bitfit_deploy.manifest import MANIFEST_FILE, read_manifest
from bitfit_deploy.runtime import Runtime

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.sampled_from([-5, 0, 1, 2, 3, 7, 10**9])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "abc", "../x", "/etc/hostname", "model.onnx", "tokenizer.json", "mean"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=5,
)


def _places(manifest: dict) -> list[tuple]:
    """Paths into the manifest to damage: every top-level key and the nested values a runtime reads."""
    first_file = next(iter(manifest["files"]))
    return [
        *((k,) for k in manifest),
        ("bias_inputs", 0, "dim"),
        ("bias_inputs", 1, "name"),
        ("text_inputs", 1),
        ("bias_inputs", 0, "name"),
        ("bias_inputs", 0),
        ("variants", "fp32"),
        ("weights", "fp32"),
        ("files", first_file),
        ("quantization", "int8", "clip"),
        ("quantization", "int8", "probe"),
        ("quantization", "int8", "calibration_inputs"),
    ]


@pytest.fixture(scope="module")
def damage_delta(tiny_int8_bundle, tmp_path_factory):
    delta = synthetic_delta(read_manifest(tiny_int8_bundle), "t")
    return save_delta(delta, tmp_path_factory.mktemp("damage") / "t.safetensors")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), how=st.sampled_from(["replace", "delete", "perturb"]), value=json_values)
def test_damaged_manifest_is_one_clear_error(
    tiny_int8_bundle, damage_delta, tmp_path_factory, data, how, value
):
    """Any damage: one BundleError from read_manifest and verify; and a bundle `verify` passes
    opens in the runtime, both variants (a task may still not fit an edited manifest)."""
    bundle = tmp_path_factory.mktemp("bundle") / "b"
    shutil.copytree(tiny_int8_bundle, bundle)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    place = data.draw(st.sampled_from([(), *_places(manifest)]), label="place")
    if not place:
        manifest = value
    else:
        *parents, last = place
        target = manifest
        for key in parents:
            target = target[key]
        if how == "delete" and isinstance(target, dict):
            target.pop(last, None)
        elif how == "perturb":
            target[last] = _perturbed(target[last], data.draw(st.integers(0, 2), label="way"))
        else:
            target[last] = value
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))

    listed: list[str] = []
    try:
        listed = list(read_manifest(bundle, verify=False).variants)
    except BundleError as exc:
        assert MANIFEST_FILE in str(exc)
    result = CliRunner().invoke(cli, ["verify", str(bundle)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (0, 1) and "Traceback" not in result.output
    verified = result.exit_code == 0
    for variant in ("fp32", "int8"):
        try:
            runtime = Runtime(bundle, variant=variant, threads=1, verify="full")
        except BitFitError:
            assert not (verified and variant in listed), (
                f"verify passed, the {variant} runtime refused"
            )
            continue
        try:
            runtime.load_task(damage_delta)
        except BitFitError:
            continue
        runtime.predict("t", ["a fine day", "x " * 40])


def _perturbed(value, way: int):  # noqa: ANN001, ANN202
    """`value` changed but of the same JSON type: what an edit (or a bit flip) leaves."""
    if isinstance(value, bool) or value is None:
        return not value
    if isinstance(value, int):
        return [value + 1, value - 1, value * 10**21][way]
    if isinstance(value, float):
        return [value * 2, -value, float("1e308")][way]
    if isinstance(value, str):
        return [value + "x", value[:-1], "../" + value][way]
    if isinstance(value, list):
        return [value[:-1], value + value[:1], value[::-1]][way]
    if isinstance(value, dict):
        keys = list(value)
        if not keys:
            return {"x": 1}
        return [{k: value[k] for k in keys[:-1]}, {**value, keys[0] + "x": value[keys[0]]}, {}][way]
    return value


def test_verify_fails_where_a_runtime_would(tiny_int8_bundle, tmp_path):
    """Every file a runtime may load needs its sha256: `verify` names each one that lacks it or
    does not match, all in one run, and passes only a whole bundle."""
    bundle = tmp_path / "b"
    shutil.copytree(tiny_int8_bundle, bundle)
    assert CliRunner().invoke(cli, ["verify", str(bundle)]).exit_code == 0
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    needed = read_manifest(bundle, verify=False).referenced_files()
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json", "base.safetensors"} <= set(needed)
    assert manifest["quantization"]["int8"]["probe"] in needed
    for rel in needed:
        edited = {**manifest, "files": {k: v for k, v in manifest["files"].items() if k != rel}}
        (bundle / MANIFEST_FILE).write_text(json.dumps(edited))
        result = CliRunner().invoke(cli, ["verify", str(bundle)])
        assert result.exit_code == 1 and f"lists no sha256 for {rel}" in result.output, rel
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    for rel in ("tokenizer.json", "base.safetensors"):
        with open(bundle / rel, "ab") as fh:
            fh.write(b"\0")
    result = CliRunner().invoke(cli, ["verify", str(bundle)])
    assert result.exit_code == 1 and "2 of" in result.output
    assert "tokenizer.json does not match" in result.output
    assert "base.safetensors does not match" in result.output


@pytest.mark.parametrize("text", ["[" * 100_000, b"\xff\xfe{}".decode("latin-1"), "", "{"])
def test_an_unreadable_manifest_is_one_error(tiny_int8_bundle, tmp_path, text):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_int8_bundle, bundle)
    (bundle / MANIFEST_FILE).write_text(text, encoding="latin-1")
    with pytest.raises(BundleError, match="is not valid JSON"):
        read_manifest(bundle, verify=False)
