"""The memory store: nothing outlives the process; a session resumes only while it is still live."""

from __future__ import annotations

from gateway.core.exchange import PendingTurn
from gateway.core.session import Exchange
from gateway.core.store.base import SessionMeta, SessionRecord
from gateway.core.store.tree_sync import TreeChange


class MemoryStore:
    """Keeps nothing: live sessions are held by the hub, and they are all there is."""

    persistent = False

    def __init__(self) -> None:
        self._claims: dict[str, float] = {}  # claimed key -> until; only unexpired ones are kept

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

    async def sync_tree(self, session_id: str, change: TreeChange) -> None:
        pass

    async def set_pending(self, session_id: str, pending: PendingTurn | None) -> None:
        pass

    async def delete(self, session_id: str) -> None:
        pass

    async def purge(self, now: float) -> int:
        return 0

    async def claim(self, key: str, now: float, until: float) -> bool:
        """Claims hold in this process only, as the sessions do; expired ones go on each claim."""
        self._claims = {k: held for k, held in self._claims.items() if held >= now}
        if key in self._claims:
            return False
        self._claims[key] = until
        return True

    async def close(self) -> None:
        pass
