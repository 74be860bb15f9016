"""`GET /status`: what a browser needs to know before and after a refused WebSocket handshake (which a
page cannot see the status of): loading, failed, draining or full, whether its key and origin pass."""

from __future__ import annotations

from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.config import Settings
from gateway.edge.auth import bearer_accepted
from gateway.edge.hosts import origin_allowed

State = Literal["ready", "loading", "failed", "draining", "full"]
Auth = Literal["none", "ok", "missing", "wrong"]


def serves_demo_model(settings: Settings) -> bool:
    """The built-in demo model (random weights) is served when no model directory is configured."""
    return settings.model is None and settings.engine == "real" and not settings.upstreams


def auth_of(authorization: str | None, settings: Settings) -> Auth:
    if not settings.api_key:
        return "none"
    if not authorization:
        return "missing"
    return "ok" if bearer_accepted(authorization, settings.api_key) else "wrong"


def state_of(request: Request) -> State:
    app = request.app.state
    settings: Settings = app.settings
    if app.engine is None:
        return "failed" if app.load_error else "loading"
    if app.draining:
        return "draining"
    counter = app.connection_counter
    client = request.client.host if request.client else "unknown"
    if counter.total >= settings.max_connections or counter.per_client[client] >= settings.max_connections_per_client:
        return "full"
    return "ready"


def durable_of(request: Request) -> bool | None:
    """Whether sessions outlive a restart: a persistent store that works now (None while loading)."""
    hub = request.app.state.hub
    return None if hub is None else bool(hub.guard.durable)


async def status_endpoint(request: Request) -> JSONResponse:
    """Always 200: the body says why /ws would refuse. The load error's text (which may name paths)
    is shown only to a client that holds the key, or when no key is configured."""
    settings: Settings = request.app.state.settings
    engine = request.app.state.engine
    auth = auth_of(request.headers.get("authorization"), settings)
    # Same-origin fetches carry no Origin header, so the page names its own origin in the query.
    origin = request.headers.get("origin") or request.query_params.get("origin")
    body: dict[str, Any] = {
        "state": state_of(request),
        "model": engine.model_id if engine is not None else None,
        "demo": serves_demo_model(settings),
        "auth": auth,
        "origin_allowed": None if origin is None else origin_allowed(origin, request.headers.get("host"), settings),
        "error": request.app.state.load_error if auth in ("none", "ok") else None,
        "durable": durable_of(request),
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
