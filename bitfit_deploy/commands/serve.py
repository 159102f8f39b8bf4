"""`bitfit-deploy serve`: an HTTP server with dynamic mixed-task batching over one bundle.

One process under uvicorn, or (`--ray`) the same app as replicas of a Ray Serve deployment.
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import click

from bitfit_deploy.commands._options import FiniteFloat, runtime_options


def _check_token(value: str | None) -> str | None:
    """An admin token that is set but blank would turn admin off silently: refuse it instead."""
    if value is not None and not value.strip():
        raise click.BadParameter(
            "is empty; give a token (e.g. `openssl rand -hex 16`), or leave --admin-token and "
            "BITFIT_ADMIN_TOKEN unset to serve without the admin endpoints.",
            param_hint="--admin-token",
        )
    return value


@click.command()
@runtime_options
@click.option(
    "--task",
    "tasks",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Delta file to serve besides the bundle's tasks (repeatable).",
)
@click.option(
    "--tasks-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The task store: serve every NAME.safetensors in it, write PUT/DELETE to it, and follow "
    "other servers' changes to it [default: admin changes in memory only].",
)
@click.option(
    "--tasks-poll-s",
    type=FiniteFloat(min=0.05),
    default=2.0,
    show_default=True,
    help="How often the task store is re-read for other servers' changes.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on.",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Most rows in one runtime run.",
)
@click.option(
    "--max-delay-ms",
    type=FiniteFloat(min=0),
    default=5.0,
    show_default=True,
    help="Longest wait for a batch to fill.",
)
@click.option(
    "--admin-token",
    envvar="BITFIT_ADMIN_TOKEN",
    default=None,
    callback=lambda ctx, param, value: _check_token(value),
    help="Enable PUT/DELETE /v1/tasks/NAME with this Bearer token [env BITFIT_ADMIN_TOKEN].",
)
@click.option(
    "--max-inputs",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Most inputs per request.",
)
@click.option(
    "--max-text-chars",
    type=click.IntRange(min=1),
    default=20_000,
    show_default=True,
    help="Longest text accepted, in characters.",
)
@click.option(
    "--body-timeout-s",
    type=FiniteFloat(min=0.1),
    default=30.0,
    show_default=True,
    help="A request body must arrive within this after its headers (else 408, connection closed).",
)
@click.option(
    "--keep-alive-s",
    type=FiniteFloat(min=0.1),
    default=5.0,
    show_default=True,
    help="Idle keep-alive connections are closed after this.",
)
@click.option(
    "--drain-timeout-s",
    type=FiniteFloat(min=0),
    default=30.0,
    show_default=True,
    help="On SIGTERM, how long requests in flight may still run before the server exits.",
)
@click.option(
    "--ray",
    "use_ray",
    is_flag=True,
    help="Serve on Ray Serve: --replicas copies of this server behind Ray's HTTP proxy "
    "(needs the extra: pip install 'bitfit-deploy[ray]').",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    default=None,
    help="With --ray: replicas, each holding one runtime with every task [default: 1].",
)
@click.option(
    "--address",
    default=None,
    help="With --ray: the Ray cluster, 'auto' (started with `ray start`) or ray://HOST:PORT "
    "[default: start a local Ray instance].",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
    help="Server log level.",
)
def command(
    bundle: Path,
    tasks: tuple[Path, ...],
    tasks_dir: Path | None,
    host: str,
    port: int,
    provider: str,
    variant: str,
    threads: int | None,
    parallel: str,
    max_batch_size: int,
    max_delay_ms: float,
    admin_token: str | None,
    max_inputs: int,
    max_text_chars: int,
    tasks_poll_s: float,
    body_timeout_s: float,
    keep_alive_s: float,
    drain_timeout_s: float,
    use_ray: bool,
    replicas: int | None,
    address: str | None,
    log_level: str,
) -> None:
    """Serve every task of a bundle over REST, the Open Inference Protocol and /metrics.

    SIGTERM or Ctrl-C stops accepting connections, answers what is in flight, then exits.
    """
    from bitfit_deploy.runtime.app import ServeConfig, build_app
    from bitfit_deploy.runtime.server import Limits

    limits = Limits(
        max_inputs=max_inputs,
        max_text_chars=max_text_chars,
        drain_timeout_s=drain_timeout_s,
        body_timeout_s=body_timeout_s,
    )
    settings = ServeConfig(
        bundle=bundle,
        tasks=tuple(tasks),
        tasks_dir=tasks_dir,
        poll_s=tasks_poll_s,
        provider=provider,
        variant=variant,
        threads=threads,
        parallel=parallel,
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
        admin_token=admin_token,
        limits=limits,
    )
    if use_ray:
        from bitfit_deploy.runtime.ray_serve import run

        run(settings, replicas or 1, address, host, port, keep_alive_s, log_level)
        return
    if replicas is not None or address is not None:
        raise click.UsageError("--replicas and --address apply to --ray only; add --ray.")
    import uvicorn

    sock = _listen_socket(host, port)  # a busy port fails now, not after loading the bundle
    built = build_app(settings)
    for problem in built.problems:
        click.echo(problem, err=True)
    names = ", ".join(sorted(built.runtime.tasks)) or "none yet"
    click.echo(
        f"serving {len(built.runtime.tasks)} task(s) ({names}) on http://{host}:{port}; "
        f"tasks: {built.store}"
    )
    config = uvicorn.Config(
        built.app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        timeout_keep_alive=keep_alive_s,
        timeout_graceful_shutdown=drain_timeout_s,
    )
    server = _graceful_server(uvicorn.Server, built.app.state.server.drain)(config)
    server.run(sockets=[sock])
    if not server.started:
        raise click.ClickException(f"the server did not start on {host}:{port}; see the log above.")


def _listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` for uvicorn to serve on; a one-line error if it cannot be."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}: {exc}; check --host.") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port, or stop "
            "the process that uses it."
        ) from None
    return sock


def _graceful_server(base: type[Any], drain: Callable[[], None]) -> type[Any]:
    """uvicorn's Server that starts the app's `drain` on a signal and exits 0 after a SIGTERM drain.

    (uvicorn would re-raise the signal.)
    """

    class GracefulServer(base):  # type: ignore[misc, valid-type]
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            drain()
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:
                with contextlib.suppress(AttributeError, ValueError):
                    self._captured_signals.remove(sig)

    return GracefulServer
