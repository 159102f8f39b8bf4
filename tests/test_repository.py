"""The Open Inference Protocol's model repository extension, driven by tritonclient."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_helpers import AUTH, TOKEN, serve, task_bytes, wait_for

from bitfit_deploy.manifest import read_manifest
from bitfit_deploy.runtime.app import BuiltApp, ServeConfig, build_app


@pytest.fixture(scope="module")
def bundle(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bitfit_deploy.exporters.bundle import export_bundle

    out = tmp_path_factory.mktemp("repository") / "bundle"
    export_bundle(out, model=str(tiny_bert))
    return out


@pytest.fixture(scope="module")
def store(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("repo-store")
    manifest = read_manifest(bundle)
    (folder / "alpha.safetensors").write_bytes(task_bytes(manifest, 1))
    (folder / "beta.safetensors").write_bytes(task_bytes(manifest, 2))
    (folder / "broken.safetensors").write_bytes(b"not a delta")
    return folder


@pytest.fixture(scope="module")
def server(bundle: Path, store: Path) -> Iterator[tuple[str, BuiltApp]]:
    built = build_app(
        ServeConfig(bundle, tasks_dir=store, poll_s=0.1, threads=1, admin_token=TOKEN)
    )
    with serve(built.app) as base:
        yield base, built


def client(base: str) -> Any:
    import tritonclient.http as tc

    return tc.InferenceServerClient(base.removeprefix("http://"))


def test_tritonclient_lists_unloads_and_loads_tasks_of_the_store(
    server: tuple[str, BuiltApp], store: Path
) -> None:
    base, built = server
    triton = client(base)
    index = {m["name"]: m for m in triton.get_model_repository_index()}
    assert set(index) == {"alpha", "beta", "broken"}
    assert index["alpha"] == {"name": "alpha", "version": "1", "state": "READY", "reason": ""}
    assert (
        index["broken"]["state"] == "UNAVAILABLE"
        and "DeltaFormatError" in index["broken"]["reason"]
    )
    ready = httpx.post(f"{base}/v2/repository/index", json={"ready": True}).json()
    assert [m["name"] for m in ready] == ["alpha", "beta"]

    triton.unload_model("alpha", headers=AUTH)
    assert not triton.is_model_ready("alpha") and "alpha" not in built.runtime.tasks
    assert (store / "alpha.unloaded").exists()
    state = {m["name"]: m["state"] for m in triton.get_model_repository_index()}
    assert state == {"alpha": "UNAVAILABLE", "beta": "READY", "broken": "UNAVAILABLE"}
    wait_for(lambda: built.runtime.tasks.keys() == {"beta"}, timeout=2, what="a poll")
    assert "alpha" not in built.runtime.tasks  # polls do not bring an unloaded task back

    triton.load_model("alpha", headers=AUTH)
    assert triton.is_model_ready("alpha") and not (store / "alpha.unloaded").exists()
    assert httpx.get(f"{base}/v1/tasks/alpha").status_code == 200
    triton.close()


def test_repository_calls_need_the_admin_token_and_name_what_is_wrong(
    server: tuple[str, BuiltApp],
) -> None:
    from tritonclient.utils import InferenceServerException

    base, _ = server
    triton = client(base)
    with pytest.raises(InferenceServerException, match="Bearer") as caught:
        triton.unload_model("alpha")
    assert caught.value.status() == "401"
    with pytest.raises(InferenceServerException, match="not in the task store") as caught:
        triton.load_model("nope", headers=AUTH)
    assert caught.value.status() == "404"
    with pytest.raises(InferenceServerException, match="PUT /v1/tasks/alpha") as caught:
        triton.load_model("alpha", headers=AUTH, config='{"backend": "onnx"}')
    assert caught.value.status() == "400"
    with pytest.raises(
        InferenceServerException, match="task store file broken.safetensors is not a readable"
    ) as caught:
        triton.load_model("broken", headers=AUTH)
    assert caught.value.status() == "422"
    bad = httpx.post(f"{base}/v2/repository/index", content=b"[1, 2]")
    assert bad.status_code == 400 and "JSON object" in bad.json()["error"]
    for body in (b"[" * 60_000, b"[" * 40 + b"]" * 40, b"{not json", b"\xff\xfe\x00", b"1" * 5000):
        for path in ("index", "models/alpha/load", "models/alpha/unload"):
            r = httpx.post(f"{base}/v2/repository/{path}", content=body, headers=AUTH)
            assert r.status_code == 400 and r.json()["code"] == "malformed_json", (path, r.text)
    triton.close()


@pytest.mark.parametrize("name", ["a%20b", ".hidden", "x" * 129, "abc%0A"])
def test_load_and_unload_refuse_what_is_no_task_name_and_write_nothing(
    server: tuple[str, BuiltApp], store: Path, name: str
) -> None:
    base, _ = server
    before = sorted(p.name for p in store.iterdir())
    for action in ("load", "unload"):
        r = httpx.post(f"{base}/v2/repository/models/{name}/{action}", headers=AUTH)
        assert r.status_code == 422 and "1-128 letters" in r.text, (action, r.text)
    assert sorted(p.name for p in store.iterdir()) == before


def test_without_a_store_the_index_lists_loaded_tasks_and_load_says_how_to_get_one(
    bundle: Path,
) -> None:
    built = build_app(ServeConfig(bundle, threads=1, admin_token=TOKEN))
    built.runtime.load_task_bytes(task_bytes(read_manifest(bundle), 3), "solo")
    with serve(built.app) as base:
        rows = httpx.post(f"{base}/v2/repository/index").json()
        assert rows == [{"name": "solo", "version": "1", "state": "READY", "reason": ""}]
        r = httpx.post(f"{base}/v2/repository/models/solo/unload", headers=AUTH)
        assert r.status_code == 409 and "--tasks-dir" in r.json()["error"]
