"""The process-wide account of image bytes held by sessions' histories, bounded by a setting."""

from __future__ import annotations

from collections.abc import Callable


class ImageLedger:
    """Each session declares what it holds after every change; the total never passes `max_bytes`
    because a session is only given the room the others leave (see TurnService). Caches of processed
    images are told what the sessions leave and keep within it, so sessions and caches together stay
    within `max_bytes` too."""

    def __init__(self, max_bytes: int, on_change: Callable[[int], None] = lambda room: None) -> None:
        self.max_bytes = max_bytes
        self.total = 0
        self._held: dict[str, int] = {}
        self._on_change = on_change  # told what the sessions leave, for caches that yield to them

    def hold(self, session_id: str, nbytes: int) -> None:
        before = self.total
        self.total += nbytes - self._held.get(session_id, 0)
        if nbytes:
            self._held[session_id] = nbytes
        else:
            self._held.pop(session_id, None)
        if self.total != before:
            self._on_change(self.max_bytes - self.total)

    def release(self, session_id: str) -> None:
        self.hold(session_id, 0)

    def holds(self, session_id: str) -> bool:
        return session_id in self._held

    def held(self, session_id: str) -> int:
        return self._held.get(session_id, 0)

    def room_for(self, session_id: str) -> int:
        """What `session_id` may hold in all: the bound less what every other session holds."""
        return self.max_bytes - (self.total - self._held.get(session_id, 0))

    def __len__(self) -> int:
        return len(self._held)
