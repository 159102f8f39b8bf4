"""Helpers for tests that run servers: a tiny bundle with tasks, uvicorn in a thread, the CLI in a child."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
from runtime_fixtures import synthetic_delta

from bitfit_deploy.delta import to_bytes
from bitfit_deploy.manifest import Manifest

TOKEN = "store-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEXTS = ["the movie was great", "this film was dull and far too long", "bad", "our trip"]


def task_bytes(manifest: Manifest, seed: int, labels: list[str] | None = None) -> bytes:
    """A synthetic delta file's bytes (labels x/y unless given)."""
    return to_bytes(synthetic_delta(manifest, f"t{seed}", labels=labels or ["x", "y"], seed=seed))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(app: Any, **config: Any) -> Iterator[str]:
    """Run `app` under uvicorn in a thread on a free loopback port; yield its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


_OUTPUT: dict[int, IO[bytes]] = {}
"""Each child's output goes to a file: a pipe nobody reads would block a chatty server."""


def start_cli(args: list[str], port: int, ready_s: float = 90) -> subprocess.Popen[bytes]:
    """`bitfit-deploy serve ARGS --port PORT` in a child process, once it answers ready."""
    exe = Path(sys.executable).parent / "bitfit-deploy"
    output = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)
    proc = subprocess.Popen(
        [str(exe), "serve", *args, "--port", str(port), "--log-level", "warning"],
        stdout=output,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    _OUTPUT[proc.pid] = output
    deadline = time.monotonic() + ready_s
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{stop(proc)}")
        assert time.monotonic() < deadline, "the server did not become ready"
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return proc
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> str:
    """Send `sig`, wait for the exit; return what the server printed."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise
    output = _OUTPUT.pop(proc.pid, None)
    if output is None:
        return ""
    with output:
        output.seek(0)
        return output.read().decode(errors="replace")


def wait_for(condition: Any, timeout: float = 20, what: str = "the condition") -> None:
    """Poll `condition()` until true; fail after `timeout` seconds (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout} s"
        time.sleep(0.05)
