"""`GET /status`: what a browser needs to know before and after a refused WebSocket handshake (which a
page cannot see the status of): loading, failed, draining or full, whether its key and origin pass."""

from __future__ import annotations

from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.config import Settings
from gateway.core.runtime import runtime_of
from gateway.edge.auth import bearer_accepted
from gateway.edge.hosts import origin_allowed
from gateway.ws.state import ws_state_of

State = Literal["ready", "loading", "failed", "draining", "full"]
Auth = Literal["none", "ok", "missing", "wrong"]


def auth_of(authorization: str | None, settings: Settings) -> Auth:
    if not settings.api_key:
        return "none"
    if not authorization:
        return "missing"
    return "ok" if bearer_accepted(authorization, settings.api_key) else "wrong"


def state_of(request: Request) -> State:
    runtime = runtime_of(request.app)
    settings = runtime.settings
    if runtime.engine is None:
        return "failed" if runtime.load_error else "loading"
    if runtime.draining:
        return "draining"
    counter = ws_state_of(request.app).counter
    client = request.client.host if request.client else "unknown"
    if counter.total >= settings.max_connections or counter.per_client[client] >= settings.max_connections_per_client:
        return "full"
    return "ready"


def durable_of(request: Request) -> bool | None:
    """Whether sessions outlive a restart: a persistent store that works now (None while loading)."""
    hub = ws_state_of(request.app).hub
    return None if hub is None else bool(hub.guard.durable)


async def status_endpoint(request: Request) -> JSONResponse:
    """Always 200: the body says why /ws would refuse. The load error's text (which may name paths)
    is shown only to a client that holds the key, or when no key is configured."""
    runtime = runtime_of(request.app)
    settings, engine = runtime.settings, runtime.engine
    auth = auth_of(request.headers.get("authorization"), settings)
    # Same-origin fetches carry no Origin header, so the page names its own origin in the query.
    origin = request.headers.get("origin") or request.query_params.get("origin")
    body: dict[str, Any] = {
        "state": state_of(request),
        "model": engine.model_id if engine is not None else None,
        "adapters": list(engine.adapters) if engine is not None else [],  # loaded at start or at run time
        "demo": settings.serves_demo_model,
        "auth": auth,
        "origin_allowed": None if origin is None else origin_allowed(origin, request.headers.get("host"), settings),
        "error": runtime.load_error if auth in ("none", "ok") else None,
        "durable": durable_of(request),
        "token_url": settings.web_token_url or None,  # where the page asks for a scoped token instead of a key
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
