"""One rule for task names (they name files and URLs), the same at every entry point: training,
export, the runtime (its own name or the delta's) and the server's PUT."""

from __future__ import annotations

import dataclasses
import string

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from runtime_fixtures import synthetic_delta
from serve_helpers import serve

from bitfit_deploy.contract import check_task_name
from bitfit_deploy.delta import save_delta, to_bytes
from bitfit_deploy.errors import InvalidInputError
from bitfit_deploy.manifest import read_manifest
from bitfit_deploy.runtime import Runtime
from bitfit_deploy.runtime.server import create_app
from bitfit_deploy.train import TrainConfig, check_config

ALLOWED = set(string.ascii_letters + string.digits + "._-")
BAD = ["my task", "", "../x", ".hidden", "a/b", "x" * 129, "abc\n", "naïve", "_lead"]
TOKEN = "names-token"


def usable(name: str) -> bool:
    """The rule, written out: 1-128 of letters, digits, '.', '_', '-', first a letter or digit."""
    return (
        1 <= len(name) <= 128
        and name[0] in ALLOWED - set("._-")
        and all(c in ALLOWED for c in name)
    )


@given(
    st.text(alphabet=st.sampled_from(sorted(ALLOWED) + [" ", "/", "\n", "é", "\\"]), max_size=130)
)
def test_the_rule(name):
    if usable(name):
        assert check_task_name(name, "x") == name
    else:
        with pytest.raises(InvalidInputError, match="1-128 letters, digits"):
            check_task_name(name, "x")


def test_training_refuses_before_any_work():
    for name in BAD:
        config = TrainConfig(task=name, train="never-read.tsv", output="never-written.safetensors")
        with pytest.raises(InvalidInputError, match="pass another --task"):
            check_config(config)
    check_config(TrainConfig(task="sst2-v1.2_b", train="t.tsv", output="o.safetensors"))


@pytest.fixture(scope="module")
def named(tiny_int8_bundle):
    manifest = read_manifest(tiny_int8_bundle)

    def delta(name: str):
        d = synthetic_delta(manifest, "ok")
        return dataclasses.replace(d, metadata=dataclasses.replace(d.metadata, task=name))

    return delta


def test_runtime_and_server_refuse_the_same_names(tiny_int8_bundle, named, tmp_path):
    runtime = Runtime(tiny_int8_bundle, threads=1)
    for name in BAD:
        with pytest.raises(InvalidInputError, match="1-128 letters"):
            runtime.load_task_bytes(to_bytes(named("ok")), name=name)
        if name:  # the delta's own name (an empty one is refused when the file is read)
            path = tmp_path / "bad.safetensors"
            save_delta(named(name), path, force=True)
            with pytest.raises(InvalidInputError, match="1-128 letters"):
                runtime.load_task(path)
    assert runtime.load_task_bytes(to_bytes(named("ok")), name="ok.v2") == "ok.v2"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serve(create_app(runtime, admin_token=TOKEN)) as base:
        for name in ("my%20task", ".hidden", "abc%0A", "x" * 129, "a%00b", "y" * 5000):
            r = httpx.put(f"{base}/v1/tasks/{name}", content=to_bytes(named("ok")), headers=auth)
            assert r.status_code == 422 and "1-128 letters" in r.text, (name, r.text)
            # DELETE too: a NUL byte was a 500 (a ValueError from the file system), a long
            # name a 500 whose body repeated it
            r = httpx.delete(f"{base}/v1/tasks/{name}", headers=auth)
            assert r.status_code == 422 and "1-128 letters" in r.text and len(r.text) < 600
        r = httpx.put(f"{base}/v1/tasks/good-1", content=to_bytes(named("ok")), headers=auth)
        assert r.status_code == 201, r.text


def test_export_refuses_a_delta_named_against_the_rule(tiny_bert, named, tmp_path):
    from bitfit_deploy.exporters.bundle import export_bundle

    path = tmp_path / "space.safetensors"
    save_delta(named("my task"), path)
    with pytest.raises(InvalidInputError, match="retrain .*space.safetensors with another --task"):
        export_bundle(tmp_path / "b", model=str(tiny_bert), tasks=[path], progress=False)
    assert not (tmp_path / "b").exists()
