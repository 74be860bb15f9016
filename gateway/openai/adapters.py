"""`POST /v1/adapters` and `DELETE /v1/adapters/{name}`: LoRA adapters loaded and unloaded while the server runs."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.core.runtime import runtime_of
from gateway.edge.auth import bearer_accepted
from gateway.engine.contract import AdapterLoader
from gateway.errors import ErrorCode
from gateway.openai.errors import ApiError
from gateway.openai.routes import _answering_errors, _model_entry, _read_body, _ready_turns

MAX_BODY_BYTES = 8192  # a name and a path


class AdapterRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of a load: the model id it will be served as, and its directory on the server (or the upstream's)."""

    name: Annotated[str, Meta(min_length=1, max_length=64)]
    path: Annotated[str, Meta(min_length=1, max_length=4096)]


def routes() -> list[Route]:
    async def load(request: Request) -> Response:
        return await _answering_errors(request, lambda: load_adapter(request), check_admin_key)

    async def unload(request: Request) -> Response:
        return await _answering_errors(request, lambda: unload_adapter(request), check_admin_key)

    return [
        Route("/v1/adapters", load, methods=["POST"]),
        Route("/v1/adapters/{name}", unload, methods=["DELETE"]),
    ]


def check_admin_key(request: Request) -> None:
    """The admin key where one is set, else the API key; with neither, nobody may name paths on this server."""
    settings = runtime_of(request.app).settings
    key = settings.admin_key or settings.api_key
    if not key:
        message = "loading adapters needs an admin key or API key configured (--admin-key, --api-key)"
        raise ApiError(403, message, code="admin_key_required")
    if not bearer_accepted(request.headers.get("authorization"), key):
        which = "admin key" if settings.admin_key else "API key"
        raise ApiError(401, f"missing or incorrect {which}", code="invalid_api_key")


async def load_adapter(request: Request) -> Response:
    engine = _loader(request)
    try:
        asked = msgspec.json.decode(await _read_body(request, MAX_BODY_BYTES), type=AdapterRequest)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid adapter request: {exc}", code=ErrorCode.INVALID_FIELD.value) from None
    except msgspec.DecodeError:
        raise ApiError(400, "the body must be a JSON object", code=ErrorCode.BAD_FRAME.value) from None
    with runtime_of(request.app).metrics.adapters.loading():
        await engine.load_adapter(asked.name, asked.path)
    return JSONResponse(_model_entry(asked.name, _ready_turns(request).engine.model_id), status_code=201)


async def unload_adapter(request: Request) -> Response:
    """Answered once the adapter is gone: after the turns running on it have finished."""
    name = request.path_params["name"]
    engine = _loader(request)
    with runtime_of(request.app).metrics.adapters.unloading(name):
        await engine.unload_adapter(name)
    return JSONResponse({"id": name, "object": "model", "deleted": True})


def _loader(request: Request) -> AdapterLoader:
    engine = _ready_turns(request).engine
    if not isinstance(engine, AdapterLoader):
        raise ApiError(501, "this engine serves a fixed set of models", code="adapters_unsupported")
    return engine
