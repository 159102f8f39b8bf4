"""`bitfit-deploy serve`: an HTTP server with dynamic mixed-task batching over one bundle."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import click

from bitfit_deploy.commands._options import runtime_options


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
    help="Serve every *.safetensors delta in this folder too.",
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
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Longest wait for a batch to fill.",
)
@click.option(
    "--admin-token",
    envvar="BITFIT_ADMIN_TOKEN",
    default=None,
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
    max_batch_size: int,
    max_delay_ms: float,
    admin_token: str | None,
    max_inputs: int,
    max_text_chars: int,
    log_level: str,
) -> None:
    """Serve every task of a bundle over REST, the Open Inference Protocol and /metrics.

    SIGTERM or Ctrl-C stops accepting connections, answers what is in flight, then exits.
    """
    import uvicorn

    from bitfit_deploy.runtime import Runtime
    from bitfit_deploy.runtime.server import Limits, create_app

    runtime = Runtime(
        bundle,
        provider=provider,
        threads=threads,
        variant=variant,
        max_batch_size=max_batch_size,
        spin_wait=False,  # idle ORT threads sleep: the event loop shares the cores
    )
    extra = list(tasks) + (sorted(tasks_dir.glob("*.safetensors")) if tasks_dir else [])
    for path in extra:
        runtime.load_task(path)
    limits = Limits(max_inputs=max_inputs, max_text_chars=max_text_chars)
    app = create_app(
        runtime,
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
        admin_token=admin_token,
        limits=limits,
    )
    names = ", ".join(sorted(runtime.tasks)) or "none yet"
    click.echo(f"serving {len(runtime.tasks)} task(s) ({names}) on http://{host}:{port}")
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=limits.drain_timeout_s,
    )
    server = _graceful_server(uvicorn.Server)(config)
    server.run()
    if not server.started:
        raise click.ClickException(f"the server did not start on {host}:{port}; see the log above.")


def _graceful_server(base: type[Any]) -> type[Any]:
    """uvicorn's Server, exiting with status 0 after a SIGTERM drain (uvicorn re-raises the signal)."""

    class GracefulServer(base):  # type: ignore[misc, valid-type]
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:
                with contextlib.suppress(AttributeError, ValueError):
                    self._captured_signals.remove(sig)

    return GracefulServer
