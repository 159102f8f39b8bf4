"""The HTTP server: Starlette routes and lifespan over one Runtime and its dynamic batcher.

REST (`/v1`), the Open Inference Protocol (`/v2`, each task a model), Prometheus `/metrics`,
and admin routes that load or unload tasks when an admin token is set. Errors become HTTP
statuses in ONE place (`_STATUSES`); clients get `{"error": code, "detail": message}` and
never a stack trace (V2 routes put the message under "error", as the protocol says).

Example:
    app = create_app(Runtime("bundle/"), max_batch_size=32, max_delay_ms=5)
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bitfit_deploy import __version__
from bitfit_deploy.arguments import MOST_BATCH, check_count, check_seconds
from bitfit_deploy.contract import check_task_name
from bitfit_deploy.errors import (
    DeltaFormatError,
    FingerprintMismatchError,
    IncompatibleTaskError,
    InvalidInputError,
    MalformedJSONError,
    TaskExistsError,
    TaskNotFoundError,
    describe,
    shown,
)
from bitfit_deploy.runtime import oip
from bitfit_deploy.runtime.batcher import Batcher, BatcherClosedError
from bitfit_deploy.runtime.json_body import read_json
from bitfit_deploy.runtime.metrics import CONTENT_TYPE, UNKNOWN_TASK, ServerMetrics
from bitfit_deploy.runtime.repository import repository_routes
from bitfit_deploy.runtime.runtime import Runtime
from bitfit_deploy.runtime.store import (
    MemoryTasks,
    StoreConflictError,
    StoreSync,
    TaskAdmin,
    TaskStoreError,
    follow,
)

log = logging.getLogger("bitfit_deploy.server")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask; beyond them the server answers 413."""

    max_body_bytes: int = 1 << 20
    max_delta_bytes: int = 64 << 20
    """Body limit of an admin delta upload."""
    max_inputs: int = 256
    """Rows per request."""
    max_text_chars: int = 20_000
    """Characters per text (each side of a pair)."""
    drain_timeout_s: float = 30.0
    """On shutdown, how long queued requests may still run."""
    body_timeout_s: float = 30.0
    """How long a request body may take to arrive after its headers (then 408)."""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_delta_bytes", "max_inputs", "max_text_chars"):
            check_count(f"Limits.{name}", getattr(self, name), 1 << 40)
        for name in ("drain_timeout_s", "body_timeout_s"):
            check_seconds(f"Limits.{name}", getattr(self, name))


class HTTPError(Exception):
    """A client error found by the server itself (limits, JSON, auth, routing)."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


_STATUSES: list[tuple[type[BaseException], int, str]] = [
    (TaskNotFoundError, 404, "task_not_found"),
    (TaskExistsError, 409, "task_exists"),
    (oip.OIPRequestError, 400, "bad_request"),
    (MalformedJSONError, 400, "malformed_json"),
    (DeltaFormatError, 422, "invalid_delta"),
    (FingerprintMismatchError, 422, "fingerprint_mismatch"),
    (IncompatibleTaskError, 422, "incompatible_task"),
    (InvalidInputError, 422, "invalid_input"),
    (BatcherClosedError, 503, "shutting_down"),
    (StoreConflictError, 409, "store_conflict"),
    (TaskStoreError, 500, "store_error"),
]


def error_response(exc: BaseException, oip_route: bool = False) -> Response:
    """The one mapping from an exception to an HTTP status and JSON body."""
    headers = None
    if isinstance(exc, HTTPError):
        status, code, detail, headers = exc.status, exc.code, exc.detail, exc.headers
    elif isinstance(exc, HTTPException):
        status, code, detail = exc.status_code, "http_error", str(exc.detail)
    else:
        known = next(((s, c) for kind, s, c in _STATUSES if isinstance(exc, kind)), None)
        if known is None:
            log.error("internal error", exc_info=exc)
            status, code, detail = 500, "internal_error", "the server failed; see its log."
        else:
            (status, code), detail = known, str(exc)
    body = {"error": detail, "code": code} if oip_route else {"error": code, "detail": detail}
    return JSONResponse(body, status_code=status, headers=headers)


class _Server:
    """The routes' shared state: the runtime, its batcher, metrics, limits and the admin token."""

    def __init__(
        self,
        runtime: Runtime,
        max_batch_size: int,
        max_delay_ms: float,
        admin_token: str | None,
        limits: Limits,
        admin: TaskAdmin | None = None,
    ) -> None:
        self.runtime = runtime
        self.limits = limits
        self.admin_token = admin_token or None
        self.admin: TaskAdmin = admin or MemoryTasks(runtime)
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None
        """The event loop serving the app, once its lifespan started."""
        self._reading: set[anyio.CancelScope] = set()
        """Body reads in progress, cut by `drain`."""
        self.metrics = ServerMetrics(lambda: len(runtime.tasks))
        self.batcher = Batcher(
            runtime.predict_mixed,
            max_batch_size,
            max_delay_ms,
            on_batch=self.metrics.observe_batch,
            on_queue=self.metrics.set_queue_depth,
        )

    # ------------------------------------------------------------------ REST
    async def list_tasks(self, request: Request) -> Response:
        tasks = [i.to_dict() for i in self.runtime.tasks.values()]
        return JSONResponse({"tasks": tasks, "store": self.admin.describe()})

    async def get_task(self, request: Request) -> Response:
        return JSONResponse(self._info(request.path_params["task"]).to_dict())

    async def predict(self, request: Request) -> Response:
        task = request.path_params["task"]
        body = await self._json(request)
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise InvalidInputError(
                'the body must be {"inputs": [text, ...]} or [[text, text_pair], ...].'
            )
        rows = self._rows([(task, item) for item in self._bounded(inputs)])
        self.metrics.requests.labels(task, "predict").inc()
        predictions = await self.batcher.submit(rows)
        return JSONResponse({"task": task, "predictions": [p.to_dict() for p in predictions]})

    async def predict_mixed(self, request: Request) -> Response:
        body = await self._json(request)
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise InvalidInputError(
                'the body must be {"requests": [{"task": ..., "input": ...}, ...]}.'
            )
        pairs = []
        shape = '{"task": name, "input": text or [text, text_pair]}'
        for index, entry in enumerate(self._bounded(requests)):
            if not isinstance(entry, dict):
                raise InvalidInputError(
                    f"request {index} is {describe(entry)}; each request is {shape}."
                )
            missing = [key for key in ("task", "input") if key not in entry]
            if missing:
                raise InvalidInputError(
                    f"request {index} has no {' or '.join(map(repr, missing))}; each request is {shape}."
                )
            if not isinstance(entry["task"], str):
                raise InvalidInputError(
                    f"request {index}: its task is {describe(entry['task'])}, not a task name "
                    f"(a string); each request is {shape}."
                )
            pairs.append((entry["task"], entry["input"]))
        rows = self._rows(pairs)
        for task in {t for t, _ in rows}:
            self.metrics.requests.labels(task, "predict_mixed").inc()
        predictions = await self.batcher.submit(rows)
        return JSONResponse({"predictions": [p.to_dict() for p in predictions]})

    # ----------------------------------------------------------------- admin
    async def put_task(self, request: Request) -> Response:
        self._authorize(request)
        name = check_task_name(request.path_params["task"], "PUT the delta under another name")
        data = await self._body(request, self.limits.max_delta_bytes)
        existed = await self.batcher.call(self.admin.put, name, data)
        log.info("%s task %s", "replaced" if existed else "loaded", name)
        body = {"task": self._info(name).to_dict(), "replaced": existed}
        return JSONResponse(body, status_code=200 if existed else 201)

    async def delete_task(self, request: Request) -> Response:
        self._authorize(request)
        name = check_task_name(request.path_params["task"], "no task of this name can be loaded")
        await self.batcher.call(self.admin.delete, name)
        log.info("unloaded task %s", name)
        return JSONResponse({"unloaded": name})

    # -------------------------------------------------------------------- V2
    async def v2_server(self, request: Request) -> Response:
        return JSONResponse(oip.server_metadata(__version__))

    async def v2_live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def v2_ready(self, request: Request) -> Response:
        ready = self.batcher.running
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def v2_model(self, request: Request) -> Response:
        return JSONResponse(oip.model_metadata(self._v2_info(request)))

    async def v2_model_ready(self, request: Request) -> Response:
        info = self._v2_info(request)
        ready = self.batcher.running
        return JSONResponse({"name": info.name, "ready": ready}, status_code=200 if ready else 503)

    async def v2_infer(self, request: Request) -> Response:
        info = self._v2_info(request)
        body = await self._body(request, self.limits.max_body_bytes)
        parsed = oip.parse_infer_request(body, request.headers.get(oip.HEADER_LENGTH), info)
        rows = self._rows([(info.name, item) for item in self._bounded(parsed.items)])
        self.metrics.requests.labels(info.name, "infer").inc()
        predictions = await self.batcher.submit(rows)
        content, headers = oip.encode_infer_response(info, parsed, predictions)
        return Response(content, headers=headers)

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    # --------------------------------------------------------------- helpers
    def _info(self, task: str) -> Any:
        info = self.runtime.tasks.get(task)
        if info is None:
            raise TaskNotFoundError(
                f"no task {shown(task)} is loaded; GET /v1/tasks lists the tasks."
            )
        return info

    def _v2_info(self, request: Request) -> Any:
        version = request.path_params.get("version")
        if version is not None and version != oip.MODEL_VERSION:
            raise HTTPError(
                404, "version_not_found", f"models have the one version {oip.MODEL_VERSION!r}."
            )
        return self._info(request.path_params["task"])

    def _task_label(self, task: str | None, endpoint: str) -> str:
        """A metrics label: a loaded task's name, never a name a client made up."""
        if task is None:
            return "_mixed" if endpoint == "predict_mixed" else "_none"
        return task if task in self.runtime.tasks else UNKNOWN_TASK

    def _bounded(self, items: list[Any]) -> list[Any]:
        if len(items) > self.limits.max_inputs:
            raise HTTPError(
                413,
                "too_many_inputs",
                f"{len(items)} inputs exceed the limit of {self.limits.max_inputs} per request; split it.",
            )
        return items

    def _rows(self, pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """Check every (task, input) row before queueing, so a bad row never reaches a batch."""
        rows = []
        for index, (task, raw) in enumerate(pairs):
            item = self.runtime.validate_input(task, raw, index)
            texts = (item,) if isinstance(item, str) else item
            longest = max(len(t) for t in texts)
            if longest > self.limits.max_text_chars:
                raise HTTPError(
                    413,
                    "text_too_long",
                    f"a text of {longest} characters exceeds the limit of {self.limits.max_text_chars}.",
                )
            rows.append((task, item))
        return rows

    async def _body(self, request: Request, limit: int) -> bytes:
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise HTTPError(
                400,
                "bad_request",
                f"Content-Encoding {encoding!r} is not supported; send identity.",
            )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdecimal() and int(declared) > limit:
            raise HTTPError(
                413, "body_too_large", f"the body of {declared} bytes exceeds the limit of {limit}."
            )
        chunks, size = [], 0
        with anyio.CancelScope(deadline=anyio.current_time() + self.limits.body_timeout_s) as scope:
            self._reading.add(scope)
            try:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise HTTPError(
                            413, "body_too_large", f"the body exceeds the limit of {limit} bytes."
                        )
                    chunks.append(chunk)
            finally:
                self._reading.discard(scope)
        if scope.cancelled_caught:  # its deadline passed, or `drain` cut it
            if self.draining:
                raise HTTPError(
                    503,
                    "shutting_down",
                    "the server is shutting down and its request body had not arrived; retry.",
                    {"Connection": "close"},
                )
            raise HTTPError(
                408,
                "body_timeout",
                f"the request body did not arrive within {self.limits.body_timeout_s:g} s of "
                "its headers; send the whole body at once.",
                {"Connection": "close"},
            )
        return b"".join(chunks)

    def drain(self) -> None:
        """Shutdown begins: cut bodies still arriving (503), so stalled clients hold nothing up.

        Safe from any thread and from a signal handler (the serve command calls it on SIGTERM).
        """
        self.draining = True
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._cut_reads)

    def _cut_reads(self) -> None:
        for scope in list(self._reading):
            scope.cancel()

    async def _json(self, request: Request) -> dict[str, Any]:
        data = read_json(await self._body(request, self.limits.max_body_bytes))
        if not isinstance(data, dict):
            raise HTTPError(400, "malformed_json", "the body must be a JSON object.")
        return data

    def _authorize(self, request: Request) -> None:
        if self.admin_token is None:
            raise HTTPError(
                403,
                "admin_disabled",
                "task admin is off; start the server with --admin-token TOKEN to enable it.",
            )
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.admin_token.encode()
        ):
            raise HTTPError(
                401,
                "unauthorized",
                "send the admin token as 'Authorization: Bearer TOKEN'.",
                {"WWW-Authenticate": "Bearer"},
            )

    def route(
        self,
        path: str,
        handler: Callable[[Request], Awaitable[Response]],
        endpoint: str,
        methods: list[str],
    ) -> Route:
        """A route whose errors map through `error_response` and whose latency is recorded."""
        oip_route = path.startswith("/v2")

        async def wrapped(request: Request) -> Response:
            start = time.perf_counter()
            try:
                response = await handler(request)
            except Exception as exc:
                response = error_response(exc, oip_route)
                label = self._task_label(request.path_params.get("task"), endpoint)
                self.metrics.errors.labels(label, str(response.status_code)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
            return response

        return Route(path, wrapped, methods=methods, name=endpoint)


def create_app(
    runtime: Runtime,
    max_batch_size: int = 32,
    max_delay_ms: float = 5.0,
    admin_token: str | None = None,
    limits: Limits | None = None,
    admin: TaskAdmin | None = None,
) -> Starlette:
    """A Starlette app serving `runtime`; its lifespan starts and drains the batcher.

    `admin` keeps the admin routes' changes: a `StoreSync` (the task store, followed every
    `poll_s` seconds while the app runs) or, by default, this process's memory.
    """
    if not callable(getattr(runtime, "predict_mixed", None)):
        raise InvalidInputError(
            f"runtime must be a bitfit_deploy.runtime.Runtime, got {describe(runtime)}; open one "
            "with Runtime(bundle_dir)."
        )
    if limits is not None and not isinstance(limits, Limits):
        raise InvalidInputError(f"limits must be a Limits(...), got {describe(limits)}.")
    check_count("max_batch_size", max_batch_size, MOST_BATCH)
    check_seconds("max_delay_ms", max_delay_ms, unit="milliseconds")
    if admin_token is not None and (not isinstance(admin_token, str) or not admin_token):
        raise InvalidInputError(
            f"admin_token must be a non-empty string (or None: no admin routes), got "
            f"{describe(admin_token)}."
        )
    server = _Server(runtime, max_batch_size, max_delay_ms, admin_token, limits or Limits(), admin)
    s = server
    routes = [
        s.route("/v1/tasks", s.list_tasks, "tasks", ["GET"]),
        s.route("/v1/tasks/{task}", s.get_task, "task", ["GET"]),
        s.route("/v1/tasks/{task}", s.put_task, "admin", ["PUT"]),
        s.route("/v1/tasks/{task}", s.delete_task, "admin", ["DELETE"]),
        s.route("/v1/tasks/{task}/predict", s.predict, "predict", ["POST"]),
        s.route("/v1/predict", s.predict_mixed, "predict_mixed", ["POST"]),
        s.route("/v2", s.v2_server, "v2", ["GET"]),
        s.route("/v2/health/live", s.v2_live, "health", ["GET"]),
        s.route("/v2/health/ready", s.v2_ready, "health", ["GET"]),
        s.route("/v2/models/{task}", s.v2_model, "v2_model", ["GET"]),
        s.route("/v2/models/{task}/versions/{version}", s.v2_model, "v2_model", ["GET"]),
        s.route("/v2/models/{task}/ready", s.v2_model_ready, "v2_model", ["GET"]),
        s.route(
            "/v2/models/{task}/versions/{version}/ready", s.v2_model_ready, "v2_model", ["GET"]
        ),
        s.route("/v2/models/{task}/infer", s.v2_infer, "infer", ["POST"]),
        s.route("/v2/models/{task}/versions/{version}/infer", s.v2_infer, "infer", ["POST"]),
        s.route("/metrics", s.metrics_text, "metrics", ["GET"]),
        *repository_routes(s.route, s.admin, s._authorize, s._body, s.batcher.call),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server.loop = asyncio.get_running_loop()
        await server.batcher.start()
        poller = None
        if isinstance(server.admin, StoreSync):
            poller = asyncio.create_task(follow(server.admin, server.batcher.call))
        try:
            yield
        finally:
            server.drain()
            if poller is not None:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
            await server.batcher.stop(timeout=server.limits.drain_timeout_s)

    async def http_error(request: Request, exc: Exception) -> Response:
        return error_response(exc, request.url.path.startswith("/v2"))

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: http_error},
    )
    app.state.server = server
    return app
