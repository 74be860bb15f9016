"""The process-wide account of image bytes held by sessions' histories, bounded by a setting."""

from __future__ import annotations


class ImageLedger:
    """Each session declares what it holds after every change; the total never passes `max_bytes`
    because a session is only given the room the others leave (see TurnService)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.total = 0
        self._held: dict[str, int] = {}

    def hold(self, session_id: str, nbytes: int) -> None:
        self.total += nbytes - self._held.get(session_id, 0)
        if nbytes:
            self._held[session_id] = nbytes
        else:
            self._held.pop(session_id, None)

    def release(self, session_id: str) -> None:
        self.hold(session_id, 0)

    def holds(self, session_id: str) -> bool:
        return session_id in self._held

    def room_for(self, session_id: str) -> int:
        """What `session_id` may hold in all: the bound less what every other session holds."""
        return self.max_bytes - (self.total - self._held.get(session_id, 0))

    def __len__(self) -> int:
        return len(self._held)
