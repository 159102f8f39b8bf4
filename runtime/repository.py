"""The Open Inference Protocol's model repository extension, over the server's task admin.

`POST /v2/repository/index` lists the tasks with their state on this replica (`READY` or
`UNAVAILABLE` and why); `POST /v2/repository/models/{task}/load` and `.../unload` load a task
from the task store again or keep it out of every replica sharing the store (admin token
required, as for PUT/DELETE). Triton clients (`tritonclient`'s `get_model_repository_index`,
`load_model`, `unload_model`) manage tasks with them. Loading with a model config or files
is Triton's and is refused: upload a delta with `PUT /v1/tasks/NAME`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bitfit_deploy.contract import check_task_name
from bitfit_deploy.runtime.json_body import read_json
from bitfit_deploy.runtime.oip import OIPRequestError
from bitfit_deploy.runtime.store import TaskAdmin

_MAX_BODY = 64 << 10


def repository_routes(
    route: Callable[..., Route],
    admin: TaskAdmin,
    authorize: Callable[[Request], None],
    read_body: Callable[[Request, int], Awaitable[bytes]],
    call: Callable[..., Awaitable[Any]],
) -> list[Route]:
    """The extension's routes; `call` runs admin work on the runtime's thread."""

    async def index(request: Request) -> Response:
        body = await _parameters(read_body, request)
        rows = admin.index()
        if body.get("ready") is True:
            rows = [r for r in rows if r["state"] == "READY"]
        return JSONResponse(rows)

    async def load(request: Request) -> Response:
        authorize(request)
        name = check_task_name(request.path_params["task"], "use the task's name")
        params = (await _parameters(read_body, request)).get("parameters") or {}
        extra = sorted(k for k in params if k == "config" or k.startswith("file:"))
        if extra:
            raise OIPRequestError(
                f"loading with {', '.join(extra)} is not supported: a task is one delta file; "
                f"upload it with PUT /v1/tasks/{name}, then load it by name."
            )
        await call(admin.load, name)
        return JSONResponse({"name": name, "state": "READY"})

    async def unload(request: Request) -> Response:
        authorize(request)
        name = check_task_name(request.path_params["task"], "use the task's name")
        await _parameters(read_body, request)  # unload_dependents: tasks have no dependents
        await call(admin.unload, name)
        return JSONResponse({"name": name, "state": "UNAVAILABLE"})

    return [
        route("/v2/repository/index", index, "repository", ["POST"]),
        route("/v2/repository/models/{task}/load", load, "admin", ["POST"]),
        route("/v2/repository/models/{task}/unload", unload, "admin", ["POST"]),
    ]


async def _parameters(
    read_body: Callable[[Request, int], Awaitable[bytes]], request: Request
) -> dict[str, Any]:
    """The request's JSON object; an empty body (as tritonclient sends to index) is `{}`."""
    body = await read_body(request, _MAX_BODY)
    if not body.strip():
        return {}
    data = read_json(body, "a repository request body")
    if not isinstance(data, dict) or not isinstance(data.get("parameters", {}), dict):
        raise OIPRequestError(
            'a repository request body is a JSON object, like {"parameters": {}}, or empty.'
        )
    return data
