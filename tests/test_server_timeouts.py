"""Slow and stuck clients: a stalled body gets 408, idle keep-alives close, SIGTERM is not held up."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from pathlib import Path

import httpx
import pytest
from runtime_fixtures import synthetic_delta
from serve_helpers import TEXTS, free_port, serve, start_cli, stop

from bitfit_deploy.delta import save_delta
from bitfit_deploy.runtime import Runtime
from bitfit_deploy.runtime.server import Limits, create_app

STALLED_HEAD = (
    b"POST /v1/tasks/t/predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    b"Content-Length: 200\r\n\r\n"
    b'{"inputs": ["a body that never ends'
)


@pytest.fixture(scope="module")
def bundle(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from bitfit_deploy.exporters.bundle import export_bundle

    root = tmp_path_factory.mktemp("timeouts")
    manifest = export_bundle(root / "bundle", model=str(tiny_bert))
    task = save_delta(synthetic_delta(manifest, "t", seed=1), root / "t.safetensors")
    return root / "bundle", task


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout bounds it)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_stalled_body_gets_408_and_its_connection_closed_while_others_are_served(
    bundle: tuple[Path, Path],
) -> None:
    runtime = Runtime(bundle[0], threads=1)
    runtime.load_task(bundle[1])
    app = create_app(runtime, limits=Limits(body_timeout_s=1.0))
    with serve(app) as base, contextlib.closing(connect(base)) as stalled:
        stalled.sendall(STALLED_HEAD)
        ok = httpx.post(f"{base}/v1/tasks/t/predict", json={"inputs": TEXTS}, timeout=30)
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == len(TEXTS)
        answer = read_until_closed(stalled)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body_timeout" in answer and b"send the whole body" in answer


def test_200_stalled_clients_block_neither_requests_nor_sigterm(
    bundle: tuple[Path, Path],
) -> None:
    """Stalled bodies may take 300 s; others are still answered, and SIGTERM cuts the bodies (503)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--bundle", str(bundle[0]), "--task", str(bundle[1]), "--threads", "1"]
    args += ["--body-timeout-s", "300", "--keep-alive-s", "1", "--drain-timeout-s", "2"]
    proc = start_cli(args, port)
    with contextlib.ExitStack() as stack:
        try:
            stalled = [stack.enter_context(contextlib.closing(connect(base))) for _ in range(200)]
            for sock in stalled:
                sock.sendall(STALLED_HEAD)

            async def normal() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                    return await asyncio.gather(
                        *(
                            client.post("/v1/tasks/t/predict", json={"inputs": TEXTS})
                            for _ in range(20)
                        )
                    )

            assert [r.status_code for r in asyncio.run(normal())] == [200] * 20
            metrics = httpx.get(f"{base}/metrics", timeout=30).text
            assert "bitfit_requests_total" in metrics

            with contextlib.closing(connect(base)) as idle:  # a keep-alive connection left idle
                idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
                assert read_until_closed(idle).startswith(b"HTTP/1.1 200")  # closed after 1 s

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=2 + 10) == 0  # drain 2 s; the bodies would hold it 300 s
            for sock in stalled:  # each was told, not just dropped
                sock.settimeout(10)
                assert read_until_closed(sock).startswith(b"HTTP/1.1 503")
        finally:
            out = stop(proc, signal.SIGKILL)
    assert "serving 1 task(s) (t)" in out
