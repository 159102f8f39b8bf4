"""`serve --ray`: the same HTTP API on Ray Serve replicas that share one task store.

The end-to-end test starts one local Ray instance (tens of seconds on 2 cores) with one
deployment of 2 replicas; it is marked slow and skipped where Ray is not installed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from runtime_fixtures import PAIRS, SENTENCES, synthetic_delta
from serve_helpers import AUTH, TOKEN, free_port, start_cli, stop, task_bytes, wait_for

from bitfit_deploy.delta import save_delta
from bitfit_deploy.manifest import read_manifest
from bitfit_deploy.runtime import Runtime

TASKS = {  # name -> (problem type, labels)
    "sent": ("single_label", ["negative", "positive"]),
    "topic": ("single_label", ["art", "sport", "money"]),
    "tags": ("multi_label", ["a", "b", "c"]),
    "stars": ("regression", []),
}


def assert_same(served: dict[str, Any], expected: Any) -> None:
    want = expected.to_dict()
    assert served["label"] == want["label"] and served["task"] == want["task"]
    assert served["scores"].keys() == want["scores"].keys()
    np.testing.assert_allclose(
        list(served["scores"].values()), list(want["scores"].values()), atol=1e-5
    )


def test_without_ray_the_ray_option_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from bitfit_deploy.runtime import ray_serve

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ray_serve.RayUnavailableError, match=r"pip install 'bitfit-deploy\[ray\]'"):
        ray_serve.run(ray_serve.ServeConfig(tmp_path), 2, None, "127.0.0.1", 1, 5.0, "info")


def test_ray_options_without_ray_are_a_usage_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bitfit_deploy.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--bundle", str(tmp_path), "--replicas", "2"])
    assert result.exit_code == 2 and "--replicas and --address apply to --ray only" in result.output


def test_the_server_and_the_command_import_ray_only_with_ray() -> None:
    code = (
        "import sys, bitfit_deploy.runtime.server, bitfit_deploy.runtime.app, "
        "bitfit_deploy.runtime.store, bitfit_deploy.commands.serve, bitfit_deploy.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_application_builder_reads_serve_run_arguments() -> None:
    from bitfit_deploy.runtime.ray_serve import RayConfigError, parse_args

    args = {"bundle": "b", "tasks_dir": "t", "replicas": "3", "threads": "2", "tasks": "x,y"}
    config, replicas, num_cpus = parse_args(args)
    assert replicas == 3 and num_cpus is None and config.threads == 2
    assert config.bundle == Path("b").resolve() and config.tasks_dir == Path("t").resolve()
    assert config.tasks == (Path("x").resolve(), Path("y").resolve())
    with pytest.raises(RayConfigError, match="unknown app_builder arguments"):
        parse_args({"bundle": "b", "replica": "2"})
    with pytest.raises(RayConfigError, match="bundle=DIR"):
        parse_args({"tasks_dir": "t"})


def test_the_application_builder_returns_a_ray_serve_application() -> None:
    serve = pytest.importorskip("ray.serve")
    from bitfit_deploy.runtime.ray_serve import app_builder

    assert isinstance(app_builder({"bundle": "b", "replicas": "2"}), serve.Application)


@pytest.mark.slow
def test_two_ray_replicas_answer_as_the_runtime_does_and_follow_the_store(
    tiny_bert: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ray.serve")
    from bitfit_deploy.exporters.bundle import export_bundle

    manifest = export_bundle(tmp_path / "bundle", model=str(tiny_bert))
    store = tmp_path / "tasks"
    store.mkdir()
    for seed, (name, (kind, labels)) in enumerate(TASKS.items()):
        save_delta(
            synthetic_delta(manifest, name, kind, labels, seed=seed), store / f"{name}.safetensors"
        )
    runtime = Runtime(tmp_path / "bundle", threads=1)
    for path in sorted(store.glob("*.safetensors")):
        runtime.load_task(path)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--ray", "--replicas", "2", "--bundle", str(tmp_path / "bundle"), "--host", "127.0.0.1"]
    args += ["--tasks-dir", str(store), "--tasks-poll-s", "0.2", "--threads", "1"]
    args += ["--admin-token", TOKEN, "--max-delay-ms", "20"]
    proc = start_cli(args, port, ready_s=240)
    try:
        names = list(TASKS)
        jobs = []
        for i in range(64):
            task = names[i % len(names)]
            inputs: list[Any] = [SENTENCES[(i + k) % len(SENTENCES)] for k in range(1 + i % 3)]
            if i % 5 == 0:
                inputs.append(list(PAIRS[i % len(PAIRS)]))
            jobs.append((task, inputs))

        async def fire() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base, timeout=120) as client:
                return await asyncio.gather(
                    *(client.post(f"/v1/tasks/{t}/predict", json={"inputs": x}) for t, x in jobs)
                )

        replicas: set[str] = set()
        for _ in range(5):  # routing is random: more rounds until both replicas answered
            for (task, inputs), response in zip(jobs, asyncio.run(fire()), strict=True):
                assert response.status_code == 200, response.text
                rows = [(task, tuple(x) if isinstance(x, list) else x) for x in inputs]
                for served, expected in zip(
                    response.json()["predictions"], runtime.predict_mixed(rows), strict=True
                ):
                    assert_same(served, expected)
                replicas.add(response.headers["x-bitfit-replica"])
            if len(replicas) == 2:
                break
        assert len(replicas) == 2

        mixed = [{"task": t, "input": SENTENCES[i]} for i, t in enumerate(names)]
        response = httpx.post(f"{base}/v1/predict", json={"requests": mixed}, timeout=60)
        expected = runtime.predict_mixed([(r["task"], r["input"]) for r in mixed])
        for served, want in zip(response.json()["predictions"], expected, strict=True):
            assert_same(served, want)
        metrics = httpx.get(f"{base}/metrics", timeout=30)
        assert "bitfit_batch_size_count" in metrics.text and metrics.headers["x-bitfit-replica"]

        new = task_bytes(read_manifest(tmp_path / "bundle"), 9, ["p", "q", "r"])
        created = httpx.put(f"{base}/v1/tasks/late", content=new, headers=AUTH, timeout=60)
        assert created.status_code == 201, created.text
        runtime.load_task_bytes(new, "late")
        answered: set[str] = set()

        def both_serve_it() -> bool:
            r = httpx.post(f"{base}/v1/tasks/late/predict", json={"inputs": SENTENCES}, timeout=60)
            if r.status_code == 200:
                for served, want in zip(
                    r.json()["predictions"], runtime.predict("late", SENTENCES), strict=True
                ):
                    assert_same(served, want)
                answered.add(r.headers["x-bitfit-replica"])
            return answered == replicas

        wait_for(both_serve_it, timeout=60, what="both replicas serving the uploaded task")
    finally:
        out = stop(proc, timeout=120)
    assert proc.returncode == 0, out
    assert "with 2 Ray Serve replica(s)" in out
