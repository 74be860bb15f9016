"""The memory store: nothing outlives the process; a session resumes only while it is still live."""

from __future__ import annotations

from gateway.core.session import Exchange, UserTurn
from gateway.core.store.base import SessionMeta, SessionRecord


class MemoryStore:
    """Keeps nothing: live sessions are held by the hub, and they are all there is."""

    persistent = False

    async def open(self) -> None:
        pass

    async def load_meta(self, session_id: str) -> SessionMeta | None:
        return None

    async def load(self, session_id: str) -> SessionRecord | None:
        return None

    async def save_meta(self, record: SessionRecord) -> None:
        pass

    async def sync_history(self, session_id: str, exchanges: list[Exchange]) -> None:
        pass

    async def set_pending(self, session_id: str, turn: UserTurn | None) -> None:
        pass

    async def delete(self, session_id: str) -> None:
        pass

    async def purge(self, now: float) -> int:
        return 0

    async def close(self) -> None:
        pass
