"""Which live frames a turn reads, and what a client is told of them."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.live_window import LiveSnapshot


@dataclass(frozen=True)
class LiveView:
    """The frames a live turn is answered over: a snapshot of one source's window."""

    source: str
    snapshot: LiveSnapshot


@dataclass(frozen=True)
class LiveFrames:
    """What `accepted` names of them: how many, the client time the first was first seen and the last last seen."""

    count: int
    first_ts: int
    last_ts: int

    @classmethod
    def of(cls, view: LiveView) -> LiveFrames:
        snapshot = view.snapshot
        return cls(len(snapshot.frames), snapshot.first_ts_ms, snapshot.last_ts_ms)
