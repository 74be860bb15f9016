"""The WebSocket front end's state, typed: the live sessions' hub, the open connections, the count per address."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from gateway.config import Settings
from gateway.edge.tokens import TokenKeys

if TYPE_CHECKING:
    from gateway.ws.connection import Connection
    from gateway.ws.hub import SessionHub


class ConnectionCounter:
    """Open connections in total and per client address; the check and the count are one step."""

    def __init__(self) -> None:
        self.total = 0
        self.per_client: collections.Counter[str] = collections.Counter()

    def admit(self, client: str, settings: Settings) -> str | None:
        """Count the connection in, or return why it is refused."""
        if self.total >= settings.max_connections:
            return "capacity"
        if self.per_client[client] >= settings.max_connections_per_client:
            return "per_client"
        self.total += 1
        self.per_client[client] += 1
        return None

    def release(self, client: str) -> None:
        self.total -= 1
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]


@dataclass
class WsState:
    """Beside the shared `core.runtime.Runtime`: what only the WebSocket front end keeps."""

    hub: SessionHub | None = None  # the live sessions, once the engine is ready
    connections: dict[str, Connection] = field(default_factory=dict)  # session id -> connection: draining, inspection
    counter: ConnectionCounter = field(default_factory=ConnectionCounter)
    token_keys: TokenKeys | None = None  # what scoped tokens are verified with; None: tokens are off


def ws_state_of(app: Any) -> WsState:
    """The front end's state on a Starlette app (`app.state.ws`)."""
    return cast(WsState, app.state.ws)
