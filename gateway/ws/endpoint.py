"""The `/ws` endpoint: admission at the handshake (capacity, origin, API key or scoped token), then one Connection."""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from gateway.config import Settings
from gateway.core.runtime import runtime_of
from gateway.edge.auth import websocket_accepted
from gateway.edge.hosts import origin_allowed
from gateway.edge.tokens import TokenClaims
from gateway.engine.contract import Engine
from gateway.ws.connection import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL, Connection
from gateway.ws.state import WsState, ws_state_of
from gateway.ws.token_admission import TokenDenied, claimed, offered_token, verified
from gateway.ws.token_scope import TokenScope

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
    try:
        claims = await _token_claims(websocket, state)
    except TokenDenied as exc:
        counter.release(client)
        metrics.rejected.labels("unauthorized").inc()
        metrics.tokens_refused.labels(exc.cause).inc()
        await _deny(websocket, exc.status, exc.reason)
        return
    connection = Connection(websocket, settings, state.hub, metrics, state.connections)
    connection.scope = TokenScope(claims) if claims is not None else None
    try:
        await connection.run(_negotiate_encoding(websocket, connection))
    finally:
        counter.release(client)


def _refusal(websocket: WebSocket, settings: Settings, engine: Engine | None, draining: bool) -> tuple[int, str] | None:
    if not _origin_allowed(websocket, settings):
        return 403, "origin"
    subprotocols = list(websocket.scope.get("subprotocols", []))
    authorization = websocket.headers.get("authorization")
    if offered_token(authorization, subprotocols) is None and not websocket_accepted(
        authorization, subprotocols, settings.api_key
    ):
        return 401, "unauthorized"
    if engine is None:
        return 503, "loading"
    if draining:
        return 503, "draining"
    return None


async def _token_claims(websocket: WebSocket, state: WsState) -> TokenClaims | None:
    """A scoped token's claims when the handshake offers one (it then binds the connection even where no key
    is required), verified and, if single use, claimed; None when the handshake carries the key instead."""
    token = offered_token(websocket.headers.get("authorization"), list(websocket.scope.get("subprotocols", [])))
    if token is None:
        return None
    claims = verified(token, state.token_keys)
    assert state.hub is not None
    await claimed(claims, state.hub)
    return claims


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
