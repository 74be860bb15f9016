"""The `/ws` endpoint: admission at the handshake (capacity, origin, API key), then one Connection."""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from gateway.config import Settings
from gateway.core.runtime import runtime_of
from gateway.edge.auth import websocket_accepted
from gateway.edge.hosts import origin_allowed
from gateway.engine.contract import Engine
from gateway.ws.connection import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL, Connection
from gateway.ws.state import ws_state_of

log = logging.getLogger("gateway.ws.endpoint")


async def websocket_endpoint(websocket: WebSocket) -> None:
    runtime, state = runtime_of(websocket.app), ws_state_of(websocket.app)
    settings, metrics = runtime.settings, runtime.metrics
    refusal = _refusal(websocket, settings, runtime.engine, runtime.draining)
    if refusal is not None:
        status, reason = refusal
        metrics.rejected.labels(reason).inc()
        await _deny(websocket, status, reason)
        return
    client = websocket.client.host if websocket.client else "unknown"
    counter = state.counter
    over = counter.admit(client, settings)
    if over is not None:
        metrics.rejected.labels(over).inc()
        await _deny(websocket, 503, "too many connections" if over == "capacity" else "too many connections from this client")
        return
    assert state.hub is not None  # the engine is ready, so is the hub
    connection = Connection(websocket, settings, state.hub, metrics, state.connections)
    try:
        await connection.run(_negotiate_encoding(websocket, connection))
    finally:
        counter.release(client)


def _refusal(websocket: WebSocket, settings: Settings, engine: Engine | None, draining: bool) -> tuple[int, str] | None:
    if not _origin_allowed(websocket, settings):
        return 403, "origin"
    subprotocols = list(websocket.scope.get("subprotocols", []))
    if not websocket_accepted(websocket.headers.get("authorization"), subprotocols, settings.api_key):
        return 401, "unauthorized"
    if engine is None:
        return 503, "loading"
    if draining:
        return 503, "draining"
    return None


def _origin_allowed(websocket: WebSocket, settings: Settings) -> bool:
    """Browsers always send Origin; a page from another site must not ride a user's access
    (cross-site WebSocket hijacking). Clients without Origin are not browsers and pass. Same origin
    alone is not enough: after DNS rebinding an attacker's page is same-origin with its own name, so
    that name must also be one the server answers for."""
    origin = websocket.headers.get("origin")
    return origin is None or origin_allowed(origin, websocket.headers.get("host"), settings)


async def _deny(websocket: WebSocket, status: int, reason: str) -> None:
    """Refuse at the handshake with an HTTP status, where the server supports it (uvicorn does)."""
    try:
        await websocket.send_denial_response(JSONResponse({"error": reason}, status_code=status))
    except RuntimeError:  # no denial-response extension: close before accepting (HTTP 403)
        await websocket.close(code=1008)


def _negotiate_encoding(websocket: WebSocket, connection: Connection) -> str | None:
    """The encoding of frames sent before the client speaks: a `gateway.msgpack` or `gateway.json`
    subprotocol, else `?encoding=`, else JSON, so a bare websocat reads text."""
    for name in websocket.scope.get("subprotocols", []):
        if name in (MSGPACK_SUBPROTOCOL, JSON_SUBPROTOCOL):
            connection.json_mode = name == JSON_SUBPROTOCOL
            return str(name)
    connection.json_mode = websocket.query_params.get("encoding", "json") != "msgpack"
    return None
