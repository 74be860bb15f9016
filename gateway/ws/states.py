"""The WebSocket front end's state machines: a connection's and a live session's, each with its checked transitions."""

from __future__ import annotations

import enum
from typing import TypeVar

S = TypeVar("S", bound=enum.Enum)


class ConnectionState(enum.Enum):
    """CONNECTING -> OPEN -> CLOSING -> CLOSED; CLOSING is skipped when the client simply leaves."""

    CONNECTING = "connecting"  # the handshake is not accepted yet
    OPEN = "open"
    CLOSING = "closing"  # a close reason is set; the reader is being stopped
    CLOSED = "closed"  # clean-up has begun and must run to its end


CONNECTION_MOVES = {
    ConnectionState.CONNECTING: {ConnectionState.OPEN, ConnectionState.CLOSED},
    ConnectionState.OPEN: {ConnectionState.CLOSING, ConnectionState.CLOSED},
    ConnectionState.CLOSING: {ConnectionState.CLOSED},
    ConnectionState.CLOSED: set(),
}


class LiveState(enum.Enum):
    """DETACHED (created, revived, or its connection gone) <-> ATTACHED (a connection streams it) -> GONE (out of
    memory: unloaded, forgotten or discarded; a stored one can come back, as a new LiveSession)."""

    DETACHED = "detached"
    ATTACHED = "attached"
    GONE = "gone"


LIVE_MOVES = {
    LiveState.DETACHED: {LiveState.ATTACHED, LiveState.GONE},
    LiveState.ATTACHED: {LiveState.ATTACHED, LiveState.DETACHED, LiveState.GONE},  # ATTACHED again: taken over
    LiveState.GONE: set(),
}


def moved(current: S, to: S, moves: dict[S, set[S]], what: str) -> S:
    """`to`, if `current` may become it; a bug otherwise."""
    if to not in moves[current]:
        raise RuntimeError(f"{what} state {current.value} cannot become {to.value}")
    return to
