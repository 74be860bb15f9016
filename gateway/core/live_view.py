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
    """What `accepted` names of them: how many, the client time the first was first seen and the last last seen,
    how many near-duplicates were merged into them, and whether the scene is `still`: the latest frame was seen
    again (merged) after it first came, so nothing changed from then to `last_ts`."""

    count: int
    first_ts: int
    last_ts: int
    merged: int = 0
    still: bool = False

    @classmethod
    def of(cls, view: LiveView) -> LiveFrames:
        snapshot = view.snapshot
        merged = sum(frame.merged for frame in snapshot.frames)
        return cls(len(snapshot.frames), snapshot.first_ts_ms, snapshot.last_ts_ms, merged, snapshot.frames[-1].merged > 0)
