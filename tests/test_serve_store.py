"""`serve --tasks-dir`: uploads survive a crash, servers sharing the store serve the same tasks."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serve_helpers import (
    AUTH,
    TEXTS,
    TOKEN,
    free_port,
    serve,
    start_cli,
    stop,
    task_bytes,
    wait_for,
)

from bitfit_deploy.errors import TaskExistsError
from bitfit_deploy.manifest import Manifest, read_manifest
from bitfit_deploy.runtime.app import ServeConfig, build_app


@pytest.fixture(scope="module")
def bundle(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bitfit_deploy.exporters.bundle import export_bundle

    out = tmp_path_factory.mktemp("serve-store") / "bundle"
    export_bundle(out, model=str(tiny_bert))
    return out


@pytest.fixture(scope="module")
def manifest(bundle: Path) -> Manifest:
    return read_manifest(bundle)


def predict(base: str, task: str) -> list[dict[str, Any]]:
    response = httpx.post(f"{base}/v1/tasks/{task}/predict", json={"inputs": TEXTS}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def scores(predictions: list[dict[str, Any]]) -> list[tuple[str, list[float]]]:
    return [(p["label"], list(p["scores"].values())) for p in predictions]


def assert_same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [label for label, _ in scores(a)] == [label for label, _ in scores(b)]
    np.testing.assert_allclose([s for _, s in scores(a)], [s for _, s in scores(b)], atol=1e-6)


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_uploaded_tasks_survive_sigkill_and_a_failed_upload_leaves_the_store_unchanged(
    bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    store = tmp_path / "tasks"
    store.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--bundle", str(bundle), "--tasks-dir", str(store), "--admin-token", TOKEN]
    args += ["--threads", "1"]
    proc = start_cli(args, port)
    try:
        alpha, beta = task_bytes(manifest, 1), task_bytes(manifest, 2, ["p", "q", "r"])
        for name, data in (("alpha", alpha), ("beta", beta)):
            r = httpx.put(f"{base}/v1/tasks/{name}", content=data, headers=AUTH)
            assert r.status_code == 201, r.text
        before = {name: predict(base, name) for name in ("alpha", "beta")}
        assert {p["label"] for p in before["beta"]} <= {"p", "q", "r"}
        stored = listing(store)
        assert stored == {"alpha.safetensors": alpha, "beta.safetensors": beta}

        foreign = task_bytes(manifest, 3)
        foreign = foreign.replace(manifest.base_fingerprint.encode(), b"0" * 64)
        for name, data in (("alpha", alpha[:999]), ("gamma", foreign), ("gamma", b"junk")):
            r = httpx.put(f"{base}/v1/tasks/{name}", content=data, headers=AUTH)
            assert r.status_code == 422, r.text
        assert listing(store) == stored
        assert httpx.get(f"{base}/v1/tasks").json()["store"]["durable"] is True
    finally:
        stop(proc, signal.SIGKILL)

    (store / "gamma.safetensors").write_bytes(b"not a delta")  # a bad file: reported, not fatal
    proc = start_cli(args, port)
    try:
        for name in ("alpha", "beta"):
            assert_same(predict(base, name), before[name])
    finally:
        out = stop(proc)
    assert "serving 2 task(s) (alpha, beta)" in out and "tasks: task store" in out
    assert f"{store / 'gamma.safetensors'}: skipped; DeltaFormatError" in out


def test_servers_sharing_a_store_serve_the_same_tasks(
    bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    config = ServeConfig(bundle, tasks_dir=tmp_path, poll_s=0.1, threads=1, admin_token=TOKEN)
    first, second = build_app(config), build_app(config)
    with serve(first.app) as one, serve(second.app) as two:
        r = httpx.put(f"{one}/v1/tasks/shared", content=task_bytes(manifest, 4), headers=AUTH)
        assert r.status_code == 201, r.text
        wait_for(lambda: "shared" in second.runtime.tasks, what="the second server loading it")
        assert_same(predict(two, "shared"), predict(one, "shared"))

        new = task_bytes(manifest, 5, ["a", "b", "c", "d"])
        r = httpx.put(f"{two}/v1/tasks/shared", content=new, headers=AUTH)
        assert r.status_code == 200 and r.json()["replaced"] is True
        wait_for(lambda: first.runtime.tasks["shared"].num_labels == 4, what="the new version")
        assert_same(predict(one, "shared"), predict(two, "shared"))

        current = predict(one, "shared")
        (tmp_path / "shared.safetensors").write_bytes(b"half a file")  # a careless writer
        wait_for(
            lambda: "previous version" in _reason(one, "shared") + _reason(two, "shared"),
            what="the bad file being seen",
        )
        assert_same(predict(one, "shared"), current)
        assert_same(predict(two, "shared"), current)

        assert httpx.delete(f"{one}/v1/tasks/shared", headers=AUTH).status_code == 200
        assert not (tmp_path / "shared.safetensors").exists()
        wait_for(lambda: "shared" not in second.runtime.tasks, what="the second server unloading")
        assert (
            httpx.post(f"{two}/v1/tasks/shared/predict", json={"inputs": ["x"]}).status_code == 404
        )


def _reason(base: str, task: str) -> str:
    rows = httpx.post(f"{base}/v2/repository/index").json()
    return next((r["reason"] for r in rows if r["name"] == task), "")


def test_without_a_store_the_server_says_admin_changes_are_memory_only(
    bundle: Path, manifest: Manifest
) -> None:
    built = build_app(ServeConfig(bundle, threads=1, admin_token=TOKEN))
    assert "memory only" in built.store
    with serve(built.app) as base:
        r = httpx.put(f"{base}/v1/tasks/t", content=task_bytes(manifest, 6), headers=AUTH)
        assert r.status_code == 201
        store = httpx.get(f"{base}/v1/tasks").json()["store"]
        assert store["durable"] is False and "lost on restart" in store["detail"]


@pytest.mark.parametrize("token", ["", "   "])
def test_a_blank_admin_token_is_refused_not_taken_as_admin_off(bundle: Path, token: str) -> None:
    from click.testing import CliRunner

    from bitfit_deploy.cli import cli

    # click reads an empty environment variable as unset (admin off, as with none at all)
    env_cases = [([], {"BITFIT_ADMIN_TOKEN": token})] if token else []
    for args, env in [(["--admin-token", token], {}), *env_cases]:
        result = CliRunner().invoke(cli, ["serve", "--bundle", str(bundle), *args], env=env)
        assert result.exit_code == 2 and "--admin-token" in result.output, result.output
        assert "is empty; give a token" in result.output


def test_a_task_file_named_as_a_loaded_task_says_what_to_do_on_the_command_line(
    bundle: Path, manifest: Manifest, tmp_path: Path
) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(task_bytes(manifest, 7))
    with pytest.raises(TaskExistsError) as info:
        build_app(ServeConfig(bundle, threads=1, tasks=(path, path)))
    message = str(info.value)
    assert f"--task {path}" in message and "train --task NAME" in message
    assert "replace=True" not in message


def test_a_busy_port_is_one_line_before_the_bundle_loads(bundle: Path) -> None:
    import socket

    from click.testing import CliRunner

    from bitfit_deploy.cli import cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--bundle", str(bundle), "--port", str(port)])
    assert result.exit_code == 1, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "--port" in result.output
    assert "serving" not in result.output
