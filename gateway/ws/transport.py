"""The TCP transport under a uvicorn WebSocket, for the reads and writes ASGI does not expose."""

from __future__ import annotations

from typing import Any

from starlette.websockets import WebSocket


def transport_of(websocket: WebSocket) -> Any:
    """The TCP transport under a uvicorn WebSocket. ASGI hides it, so follow the `send` callable:
    middleware wraps it in closures, and at the bottom is a method of uvicorn's protocol object."""
    pending: list[Any] = [getattr(websocket, "_send", None)]
    for _ in range(16):  # a few wrappers deep at most; never loop on odd objects
        if not pending:
            break
        candidate = pending.pop()
        transport = getattr(candidate, "transport", None)
        if transport is not None:
            return transport
        pending.append(getattr(candidate, "__self__", None))
        pending.extend(c.cell_contents for c in getattr(candidate, "__closure__", None) or ())
    return None
