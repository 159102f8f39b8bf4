"""Ray Serve: the HTTP app of `bitfit-deploy serve` as replicas behind Ray's HTTP proxy.

Each replica runs `build_app` (one runtime with every task, its own batcher and /metrics) as a
Ray Serve ASGI ingress, so rows of any tasks share runs within a replica exactly as in the
single-process server. All replicas follow one task store (`ServeConfig.tasks_dir`, a folder
every Ray node sees at the same path), so an upload to one replica reaches the others within
the store's poll interval. Responses carry `X-BitFit-Replica`, the id of the replica that
answered (and whose /metrics a `GET /metrics` shows).

Compose your own Ray Serve app from `application(config, replicas)`; `serve run
bitfit_deploy.runtime.ray_serve:app_builder bundle=DIR tasks_dir=DIR replicas=2` uses
`app_builder`; `bitfit-deploy serve --ray` calls `run`. Ray is imported only here, and only
when one of them is called: install it with `pip install 'bitfit-deploy[ray]'`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from bitfit_deploy.errors import BitFitError
from bitfit_deploy.runtime.app import ServeConfig, build_app

log = logging.getLogger("bitfit_deploy.ray")

APP_NAME = "bitfit-deploy"
REPLICA_HEADER = "x-bitfit-replica"
_INSTALL = "pip install 'bitfit-deploy[ray]' (or: pip install 'ray[serve]>=2.47')"


class RayUnavailableError(BitFitError, ImportError):
    """Ray Serve is not installed."""


class RayConfigError(BitFitError, ValueError):
    """`app_builder` was given arguments it does not know, or lacks `bundle`."""


class BitFitServer:
    """One Ray Serve replica; `serve.ingress` gives it the app, built when the replica starts."""


def replica_app(config: ServeConfig) -> Any:
    """What one replica serves: a runtime with every task, behind a header naming the replica."""
    from ray import serve

    built = build_app(config)
    for problem in built.problems:
        log.warning("%s", problem)
    replica = serve.get_replica_context().replica_id.unique_id
    return _tagged(built.app, replica)


def application(
    config: ServeConfig,
    replicas: int = 1,
    num_cpus: float | None = None,
    max_ongoing_requests: int = 256,
) -> Any:
    """A Ray Serve Application of `replicas` servers; `serve.run(application(...))` deploys it.

    Args:
        config: the server's settings; its paths must exist on every Ray node.
        replicas: how many copies, each with its own runtime and every task.
        num_cpus: CPUs Ray reserves per replica [default: `config.threads`, else 1].
        max_ongoing_requests: requests one replica holds at once; the batcher needs many
            to fill its batches (Ray's default of 5 would cap them).
    """
    _, serve = _ray()
    config = _absolute(config)

    def build() -> Any:  # a builder function: Ray calls it in each replica (Ray >= 2.47)
        return replica_app(config)

    return serve.deployment(
        serve.ingress(build)(BitFitServer),
        num_replicas=replicas,
        ray_actor_options={"num_cpus": num_cpus if num_cpus is not None else config.threads or 1},
        max_ongoing_requests=max_ongoing_requests,
        graceful_shutdown_timeout_s=config.limits.drain_timeout_s,
    ).bind()


def app_builder(args: dict[str, str]) -> Any:
    """For `serve run bitfit_deploy.runtime.ray_serve:app_builder key=value ...`; see `parse_args`."""
    config, replicas, num_cpus = parse_args(args)
    return application(config, replicas, num_cpus)


def parse_args(args: dict[str, str]) -> tuple[ServeConfig, int, float | None]:
    """(config, replicas, num_cpus) from `serve run`'s key=value strings.

    Keys: bundle (required), tasks_dir, tasks (comma-separated), replicas, num_cpus, and the
    scalar fields of `ServeConfig` (poll_s, provider, variant, threads, max_batch_size,
    max_delay_ms, admin_token).
    """
    args = dict(args)
    if "bundle" not in args:
        raise RayConfigError("app_builder needs bundle=DIR (a folder written by export --onnx).")
    replicas = int(args.pop("replicas", 1))
    num_cpus = float(args.pop("num_cpus")) if "num_cpus" in args else None
    tasks = tuple(Path(p) for p in args.pop("tasks", "").split(",") if p)
    kinds = {"poll_s": float, "threads": int, "max_batch_size": int, "max_delay_ms": float}
    fields = {f.name for f in dataclasses.fields(ServeConfig)} - {"limits", "tasks"}
    unknown = sorted(set(args) - fields)
    if unknown:
        raise RayConfigError(
            f"unknown app_builder arguments {unknown}; the known ones are "
            f"{sorted(fields | {'tasks', 'replicas', 'num_cpus'})}."
        )
    values: dict[str, Any] = {k: kinds.get(k, str)(v) for k, v in args.items()}
    values["bundle"] = Path(values["bundle"])
    if "tasks_dir" in values:
        values["tasks_dir"] = Path(values["tasks_dir"])
    return _absolute(ServeConfig(**values, tasks=tasks)), replicas, num_cpus


def run(
    config: ServeConfig,
    replicas: int,
    address: str | None,
    host: str,
    port: int,
    keep_alive_s: float,
    log_level: str,
) -> None:
    """`bitfit-deploy serve --ray`: deploy on Ray Serve, serve until SIGTERM or Ctrl-C, then drain."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reporting home from servers
    ray, serve = _ray()
    local = address is None
    ray.init(address=address, include_dashboard=False, logging_level=log_level.upper())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(
            http_options={
                "host": host,
                "port": port,
                "keep_alive_timeout_s": max(1, round(keep_alive_s)),
            }
        )
        serve.run(application(config, replicas), name=APP_NAME, route_prefix="/")
        print(
            f"serving on http://{host}:{port} with {replicas} Ray Serve replica(s), each with "
            f"every task; tasks: {_store_words(config)}",
            flush=True,
        )
        stop.wait()
        print("draining (Ray Serve stops the replicas gracefully)", flush=True)
    finally:
        if local:
            serve.shutdown()
            ray.shutdown()
        else:
            serve.delete(APP_NAME)


# ---------------------------------------------------------------- internals


def _ray() -> tuple[Any, Any]:
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise RayUnavailableError(
            f"--ray needs Ray Serve, which is not installed: {_INSTALL}."
        ) from exc
    return ray, serve


def _absolute(config: ServeConfig) -> ServeConfig:
    """The config with absolute paths: replicas do not start in this process's folder."""
    return dataclasses.replace(
        config,
        bundle=Path(config.bundle).resolve(),
        tasks=tuple(Path(p).resolve() for p in config.tasks),
        tasks_dir=None if config.tasks_dir is None else Path(config.tasks_dir).resolve(),
    )


def _store_words(config: ServeConfig) -> str:
    if config.tasks_dir is None:
        return "memory only per replica (no --tasks-dir): uploads reach one replica and are lost on restart"
    return f"task store {config.tasks_dir} (each replica re-reads it every {config.poll_s:g} s)"


def _tagged(app: Any, replica: str) -> Any:
    """`app` whose HTTP responses name the replica that answered."""
    header = (REPLICA_HEADER.encode(), replica.encode())

    async def tagged(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_tagged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await app(scope, receive, send_tagged)

    return tagged
