"""The HTTP server on loopback with a real client: batching, V2 protocol, admin, limits, errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serve_helpers import serve

from bitfit_deploy.delta import DeltaMetadata, TaskDelta, save_delta, to_bytes
from bitfit_deploy.runtime import Runtime
from bitfit_deploy.runtime.server import Limits, create_app

TOKEN = "s3cret-token"
TEXTS = [
    "the movie was great",
    "this film was dull and far too long",
    "our trip",
    "a wonderful, lovely, superb book that everyone should read at least twice",
    "bad",
    "the food was fine but the service was slow",
]
TASKS = {  # name -> (problem_type, labels)
    "sent": ("single_label", ["negative", "positive"]),
    "topic": ("single_label", ["sport", "food", "film"]),
    "tags": ("multi_label", ["a", "b", "c"]),
    "stars": ("regression", ["score"]),
}


def make_delta(
    manifest: Any,
    name: str,
    problem_type: str,
    labels: list[str],
    seed: int,
    fingerprint: str | None = None,
) -> TaskDelta:
    """A synthetic task: random small bias deltas and a random head over the bundle's base."""
    rng = np.random.default_rng(seed)
    biases = {b.name: rng.normal(0, 0.05, b.dim).astype(np.float32) for b in manifest.bias_inputs}
    n = 1 if problem_type == "regression" else len(labels)
    meta = DeltaMetadata(
        task=name,
        base_fingerprint=fingerprint or manifest.base_fingerprint,
        problem_type=problem_type,
        labels=labels,
        pooling=manifest.pooling,
    )
    head_w = rng.normal(0, 2.0, (n, manifest.hidden_size)).astype(np.float32)
    return TaskDelta(meta, biases, head_w, rng.normal(0, 0.5, n).astype(np.float32))


@pytest.fixture(scope="module")
def bundle(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from bitfit_deploy.exporters.bundle import export_bundle

    root = tmp_path_factory.mktemp("served")
    manifest = export_bundle(root / "bundle", model=str(tiny_bert))
    (root / "tasks").mkdir()
    for seed, (name, (kind, labels)) in enumerate(TASKS.items()):
        save_delta(
            make_delta(manifest, name, kind, labels, seed), root / "tasks" / f"{name}.safetensors"
        )
    return {"dir": root / "bundle", "tasks": root / "tasks", "manifest": manifest}


def make_runtime(bundle: dict[str, Any]) -> Runtime:
    runtime = Runtime(bundle["dir"], threads=1, max_batch_size=16)
    for path in sorted(bundle["tasks"].glob("*.safetensors")):
        runtime.load_task(path)
    return runtime


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def runtime(bundle: dict[str, Any]) -> Runtime:
    return make_runtime(bundle)


@pytest.fixture(scope="module")
def url(runtime: Runtime) -> Iterator[str]:
    limits = Limits(max_body_bytes=64_000, max_inputs=32, max_text_chars=2_000)
    app = create_app(runtime, max_batch_size=16, max_delay_ms=20, admin_token=TOKEN, limits=limits)
    with serve(app) as base:
        yield base


def assert_same(served: dict[str, Any], expected: Any) -> None:
    """A served prediction equals the in-process one (scores up to float noise of other paddings)."""
    want = expected.to_dict()
    assert served.keys() == want.keys()
    for key in ("task", "label", "predicted_labels", "truncated"):
        assert served[key] == want[key], key
    assert served["score"] == pytest.approx(want["score"], abs=1e-5)
    assert served["scores"] == pytest.approx(want["scores"], abs=1e-5)
    if want["value"] is None:
        assert served["value"] is None
    else:
        assert served["value"] == pytest.approx(want["value"], abs=1e-5)


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert "Traceback" not in response.text and 'File "' not in response.text
    assert isinstance(body["error"], str) and body["error"]
    if code is not None:
        assert body.get("error") == code or body.get("code") == code
    return body


# ------------------------------------------------------------------ batching


def test_200_concurrent_requests_across_tasks_answer_what_the_runtime_answers(
    url: str, runtime: Runtime
) -> None:
    names = list(TASKS)
    jobs: list[tuple[str, dict[str, Any], list[tuple[str, Any]]]] = []
    for i in range(200):
        if i % 4 == 3:  # a mixed-task request
            rows = [(names[(i + k) % 4], TEXTS[(i + k) % len(TEXTS)]) for k in range(3)]
            body = {"requests": [{"task": t, "input": x} for t, x in rows]}
            jobs.append(("/v1/predict", body, rows))
        else:
            task = names[i % 4]
            inputs: list[Any] = [TEXTS[(i + k) % len(TEXTS)] for k in range(1 + i % 3)]
            if i % 5 == 0:
                inputs.append([TEXTS[i % len(TEXTS)], TEXTS[(i + 1) % len(TEXTS)]])
            rows = [(task, tuple(x) if isinstance(x, list) else x) for x in inputs]
            jobs.append((f"/v1/tasks/{task}/predict", {"inputs": inputs}, rows))

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            return await asyncio.gather(*(client.post(path, json=body) for path, body, _ in jobs))

    responses = asyncio.run(fire())
    for (path, _, rows), response in zip(jobs, responses, strict=True):
        assert response.status_code == 200, response.text
        served = response.json()["predictions"]
        expected = runtime.predict_mixed(rows)
        assert len(served) == len(expected)
        for s, e in zip(served, expected, strict=True):
            assert_same(s, e)
        if path.startswith("/v1/tasks/"):
            assert response.json()["task"] == rows[0][0]

    text = httpx.get(f"{url}/metrics").text
    runs = metric(text, "bitfit_batch_size_count")
    assert runs >= 1 and metric(text, "bitfit_batch_size_sum") / runs > 1
    assert metric(text, "bitfit_mixed_batches_total") >= 1
    assert (
        metric(text, 'bitfit_batch_tasks_bucket{le="1.0"}') < runs
    )  # some runs held several tasks
    assert 'bitfit_requests_total{endpoint="predict",task="sent"}' in text
    assert 'bitfit_requests_total{endpoint="predict_mixed",task="stars"}' in text
    assert metric(text, "bitfit_loaded_tasks") >= 4
    assert "bitfit_queue_depth" in text and "bitfit_request_latency_seconds_bucket" in text


def test_tasks_are_listed_and_described(url: str) -> None:
    tasks = {t["name"]: t for t in httpx.get(f"{url}/v1/tasks").json()["tasks"]}
    assert set(TASKS) <= set(tasks)
    assert (
        tasks["topic"]["labels"] == ["sport", "food", "film"] and tasks["topic"]["num_labels"] == 3
    )
    assert httpx.get(f"{url}/v1/tasks/stars").json()["problem_type"] == "regression"


# ------------------------------------------------------------------------ V2


def test_open_inference_protocol_round_trip_with_tritonclient(url: str, runtime: Runtime) -> None:
    import tritonclient.http as tc
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("topic") and not client.is_model_ready("nope")
    meta = client.get_model_metadata("topic")
    assert [i["name"] for i in meta["inputs"]] == ["text", "text_pair"]
    assert [o["name"] for o in meta["outputs"]] == ["label", "score", "scores"]
    server = client.get_server_metadata()
    assert server["name"] == "bitfit-deploy"
    assert server["extensions"] == ["binary_tensor_data", "model_repository"]  # both served

    texts = np.array(TEXTS, dtype=object)
    expected = runtime.predict("topic", list(TEXTS))
    for binary in (True, False):
        inp = tc.InferInput("text", [len(TEXTS)], "BYTES")
        inp.set_data_from_numpy(texts, binary_data=binary)
        outputs = [
            tc.InferRequestedOutput(n, binary_data=binary) for n in ("label", "score", "scores")
        ]
        result = client.infer("topic", [inp], outputs=outputs, request_id="r1")
        labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
        assert labels == [p.label for p in expected]
        np.testing.assert_allclose(result.as_numpy("score"), [p.score for p in expected], atol=1e-5)
        scores = result.as_numpy("scores")
        assert scores.shape == (len(TEXTS), 3)
        np.testing.assert_allclose(
            scores, [[p.scores[k] for k in ("sport", "food", "film")] for p in expected], atol=1e-5
        )
        assert result.get_response()["id"] == "r1"

    # text pairs, every output by default (binary), a regression task
    first = tc.InferInput("text", [2], "BYTES")
    first.set_data_from_numpy(np.array(TEXTS[:2], dtype=object))
    second = tc.InferInput("text_pair", [2], "BYTES")
    second.set_data_from_numpy(np.array(TEXTS[2:4], dtype=object))
    result = client.infer("stars", [first, second])
    want = runtime.predict("stars", [(TEXTS[0], TEXTS[2]), (TEXTS[1], TEXTS[3])])
    np.testing.assert_allclose(result.as_numpy("value"), [p.value for p in want], atol=1e-5)

    with pytest.raises(InferenceServerException, match="no task 'nope'"):
        client.infer("nope", [first])
    client.close()


def test_a_multi_label_task_answers_which_labels_are_predicted_over_v2(
    url: str, runtime: Runtime
) -> None:
    """V2 answered only the top label of a multi-label task, so a client could not tell that
    no label (or several) passed 0.5; `predicted` (BOOL [n, labels]) says, as JSON or binary."""
    import tritonclient.http as tc

    client = tc.InferenceServerClient(url.removeprefix("http://"))
    meta = client.get_model_metadata("tags")
    assert meta["outputs"][-1] == {"name": "predicted", "datatype": "BOOL", "shape": [-1, 3]}
    expected = runtime.predict("tags", list(TEXTS))
    want = [[lab in p.predicted_labels for lab in ("a", "b", "c")] for p in expected]
    for binary in (True, False):
        inp = tc.InferInput("text", [len(TEXTS)], "BYTES")
        inp.set_data_from_numpy(np.array(TEXTS, dtype=object), binary_data=binary)
        asked = [tc.InferRequestedOutput(n, binary_data=binary) for n in ("predicted", "label")]
        result = client.infer("tags", [inp], outputs=asked)
        got = result.as_numpy("predicted")
        assert got.dtype == np.bool_ and got.tolist() == want
    assert 0 < sum(map(sum, want)) < 3 * len(want)  # some labels predicted, some not
    client.close()


def test_v2_protocol_errors_are_400_with_the_message_under_error(url: str) -> None:
    infer = f"{url}/v2/models/sent/infer"
    cases = [
        {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
        {"inputs": [{"name": "other", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["x"]}]},
        {"inputs": [{"name": "text_pair", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
        {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
            "outputs": [{"name": "logits"}],
        },
        {"no": "inputs"},
    ]
    for body in cases:
        error = assert_error(httpx.post(infer, json=body), 400, "bad_request")
        assert len(error["error"]) > 20  # the message itself, as the protocol has it
    assert_error(httpx.post(infer, content=b"{oops"), 400)
    bad_header = httpx.post(infer, content=b"{}", headers={"Inference-Header-Content-Length": "99"})
    assert_error(bad_header, 400)
    assert_error(httpx.get(f"{url}/v2/models/sent/versions/7"), 404)
    ok = httpx.post(
        f"{url}/v2/models/sent/versions/1/infer",
        json={
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [["fine"]]}]
        },
    )
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"][0] in TASKS["sent"][1]


# -------------------------------------------------------------------- errors


def test_every_client_error_is_json_with_its_status(url: str) -> None:
    post = httpx.post
    assert_error(
        post(f"{url}/v1/tasks/nope/predict", json={"inputs": ["x"]}), 404, "task_not_found"
    )
    assert_error(
        post(
            f"{url}/v1/predict",
            json={"requests": [{"task": "sent", "input": "x"}, {"task": "nope", "input": "y"}]},
        ),
        404,
    )
    assert_error(httpx.get(f"{url}/v1/tasks/nope"), 404)
    assert_error(httpx.get(f"{url}/v2/models/nope"), 404)
    assert_error(post(f"{url}/v2/models/nope/infer", json={"inputs": []}), 404)
    assert_error(post(f"{url}/v1/tasks/sent/predict", content=b"{not json"), 400, "malformed_json")
    assert_error(post(f"{url}/v1/tasks/sent/predict", content=b"\xff\xfe"), 400, "malformed_json")
    assert_error(post(f"{url}/v1/tasks/sent/predict", json=["x"]), 400, "malformed_json")
    assert_error(post(f"{url}/v1/tasks/sent/predict", json={"inputs": []}), 422, "invalid_input")
    assert_error(post(f"{url}/v1/tasks/sent/predict", json={"inputs": "x"}), 422)
    assert_error(post(f"{url}/v1/tasks/sent/predict", json={"inputs": [3]}), 422, "invalid_input")
    assert_error(post(f"{url}/v1/tasks/sent/predict", json={"inputs": [["a", "b", "c"]]}), 422)
    assert_error(post(f"{url}/v1/predict", json={"requests": [{"task": "sent"}]}), 422)
    assert_error(
        post(f"{url}/v1/tasks/sent/predict", json={"inputs": ["x"] * 33}), 413, "too_many_inputs"
    )
    assert_error(
        post(f"{url}/v1/tasks/sent/predict", json={"inputs": ["x" * 2001]}), 413, "text_too_long"
    )
    assert_error(post(f"{url}/v1/tasks/sent/predict", json={"inputs": [["x", "y" * 2001]]}), 413)
    assert_error(post(f"{url}/v1/tasks/sent/predict", content=b" " * 70_000), 413, "body_too_large")
    gz = post(f"{url}/v1/tasks/sent/predict", content=b"{}", headers={"content-encoding": "gzip"})
    assert_error(gz, 400)
    assert_error(httpx.get(f"{url}/no/such/route"), 404)
    assert_error(httpx.delete(f"{url}/v1/predict"), 405)
    text = httpx.get(f"{url}/metrics").text
    assert 'bitfit_request_errors_total{status="404",task="_unknown"}' in text
    assert 'bitfit_request_errors_total{status="422",task="sent"}' in text


def test_a_bad_row_fails_its_request_only_and_internal_errors_hide_their_trace(
    bundle: dict[str, Any],
) -> None:
    class Flaky:
        """The real runtime, except that runs holding the text 'explode' fail unexpectedly."""

        def __init__(self) -> None:
            self.inner = make_runtime(bundle)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def predict_mixed(self, rows: Any) -> Any:
            if any(x == "explode" for _, x in rows):
                raise RuntimeError("secret internal detail at /srv/app.py line 3")
            return self.inner.predict_mixed(rows)

    app = create_app(Flaky(), max_batch_size=32, max_delay_ms=200)  # type: ignore[arg-type]
    with serve(app) as base:

        async def fire() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                bodies = [
                    {"inputs": ["fine"]},
                    {"inputs": ["explode"]},
                    {"inputs": ["good", "bad"]},
                ]
                return await asyncio.gather(
                    *(client.post("/v1/tasks/sent/predict", json=b) for b in bodies)
                )

        good, bad, good2 = asyncio.run(fire())
        assert good.status_code == 200 and good2.status_code == 200
        body = assert_error(bad, 500, "internal_error")
        assert "secret" not in bad.text and "Traceback" not in body["detail"]
        batches = httpx.get(f"{base}/metrics").text
        assert metric(batches, "bitfit_batch_requests_count") >= 2


# --------------------------------------------------------------------- admin


def test_admin_needs_a_configured_token(bundle: dict[str, Any]) -> None:
    data = (bundle["tasks"] / "sent.safetensors").read_bytes()
    with serve(create_app(make_runtime(bundle))) as base:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert_error(
            httpx.put(f"{base}/v1/tasks/new", content=data, headers=headers), 403, "admin_disabled"
        )
        assert_error(httpx.delete(f"{base}/v1/tasks/sent", headers=headers), 403)
        assert httpx.get(f"{base}/v1/tasks/sent").status_code == 200


def test_admin_loads_replaces_and_unloads_tasks_and_a_rejected_file_changes_nothing(
    url: str, bundle: dict[str, Any], runtime: Runtime
) -> None:
    manifest = bundle["manifest"]
    first = to_bytes(make_delta(manifest, "whatever", "single_label", ["x", "y"], seed=11))
    second = to_bytes(make_delta(manifest, "whatever", "single_label", ["p", "q", "r"], seed=12))
    task_url = f"{url}/v1/tasks/extra"
    auth = {"Authorization": f"Bearer {TOKEN}"}

    r = httpx.put(task_url, content=first)
    assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    assert_error(httpx.put(task_url, content=first, headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(httpx.put(task_url, content=first, headers={"Authorization": TOKEN}), 401)
    assert_error(httpx.delete(f"{url}/v1/tasks/sent"), 401)

    created = httpx.put(task_url, content=first, headers=auth)
    assert created.status_code == 201, created.text
    assert created.json()["task"]["labels"] == ["x", "y"] and created.json()["replaced"] is False
    before = httpx.post(f"{task_url}/predict", json={"inputs": TEXTS}).json()["predictions"]
    assert {p["label"] for p in before} <= {"x", "y"}

    foreign = to_bytes(
        make_delta(manifest, "extra", "single_label", ["x", "y"], 13, fingerprint="0" * 64)
    )
    rejected = [
        (first[: len(first) // 2], "invalid_delta"),
        (b"not a delta at all", "invalid_delta"),
        (foreign, "fingerprint_mismatch"),
    ]
    for data, code in rejected:
        assert_error(httpx.put(task_url, content=data, headers=auth), 422, code)
        assert (
            httpx.post(f"{task_url}/predict", json={"inputs": TEXTS}).json()["predictions"]
            == before
        )
    assert_error(httpx.put(f"{url}/v1/tasks/bad name!", content=first, headers=auth), 422)

    replaced = httpx.put(task_url, content=second, headers=auth)
    assert replaced.status_code == 200 and replaced.json()["replaced"] is True
    after = httpx.post(f"{task_url}/predict", json={"inputs": TEXTS}).json()["predictions"]
    assert {p["label"] for p in after} <= {"p", "q", "r"}
    assert len(after[0]["scores"]) == 3

    assert httpx.delete(task_url, headers=auth).json() == {"unloaded": "extra"}
    assert_error(httpx.post(f"{task_url}/predict", json={"inputs": ["x"]}), 404)
    assert_error(httpx.delete(task_url, headers=auth), 404)
    assert "extra" not in runtime.tasks and set(TASKS) <= set(runtime.tasks)


# ------------------------------------------------------------------ shutdown


async def queued_rows(client: httpx.AsyncClient) -> float:
    return metric((await client.get("/metrics")).text, "bitfit_queue_depth")


def test_sigterm_answers_requests_in_flight_then_exits(bundle: dict[str, Any]) -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    exe = Path(sys.executable).parent / "bitfit-deploy"
    proc = subprocess.Popen(
        [
            str(exe),
            "serve",
            "--bundle",
            str(bundle["dir"]),
            "--tasks-dir",
            str(bundle["tasks"]),
            "--port",
            str(port),
            "--max-delay-ms",
            "3000",
            "--max-batch-size",
            "64",
            "--threads",
            "1",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the server did not become ready"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)

        async def fire() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                sends = [
                    client.post(f"/v1/tasks/{t}/predict", json={"inputs": TEXTS[:2]})
                    for t in list(TASKS) * 2
                ]

                async def terminate() -> None:
                    # SIGTERM once all 16 rows wait in the batcher (its 3 s delay has not passed)
                    give_up = time.monotonic() + 20
                    while await queued_rows(client) < 16:
                        assert time.monotonic() < give_up, "the requests never queued up"
                        await asyncio.sleep(0.05)
                    proc.send_signal(signal.SIGTERM)

                results = await asyncio.gather(*sends, terminate())
                return results[:-1]

        responses = asyncio.run(fire())
        assert [r.status_code for r in responses] == [200] * 8
        assert all(len(r.json()["predictions"]) == 2 for r in responses)
        assert proc.wait(30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/v2/health/live", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def test_serve_refuses_a_missing_bundle(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bitfit_deploy.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--bundle", str(tmp_path / "none")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(cli, ["serve", "--bundle", str(tmp_path)])
    assert result.exit_code == 1 and "BundleError" in result.output


def test_a_server_that_is_not_running_its_batcher_answers_503(runtime: Runtime) -> None:
    app = create_app(runtime)  # no lifespan run: the batcher never started (as after shutdown)

    async def fire() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (
                await client.post("/v1/tasks/sent/predict", json={"inputs": ["x"]}),
                await client.get("/v2/health/ready"),
                await client.get("/v2/health/live"),
            )

    predict, ready, live = asyncio.run(fire())
    assert_error(predict, 503, "shutting_down")
    assert ready.status_code == 503 and live.status_code == 200


def test_the_server_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, bitfit_deploy.runtime.server, bitfit_deploy.commands.serve\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
