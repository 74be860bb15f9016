"""A live session's store writes, in order and bounded, and the store's upkeep: the hub's durable side."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from gateway.config import Settings
from gateway.core.exchange import PendingTurn
from gateway.core.store.base import SessionStore
from gateway.core.store.guard import StoreGuard, StoreUnavailable
from gateway.core.turn_types import StartedTurn
from gateway.ws.live_session import LiveSession

log = logging.getLogger("gateway.sessions")
PURGE_EVERY_S = 600.0


class SessionSaving:
    """Writes go through the guard (each bounded by store_timeout_s); a failing store is logged and sessions go
    on in memory. Work that outlives its caller runs as tasks this object awaits on close."""

    settings: Settings
    store: SessionStore
    guard: StoreGuard
    _tasks: set[asyncio.Task[None]]

    async def turn_started(self, live: LiveSession, started: StartedTurn) -> None:
        """Called right after submit, before any await: the lock is ours before the turn can end."""
        turn = PendingTurn(started.turn, started.answers, started.edits)  # so a crash rejoins it where it belongs
        await self._save(live, "the turn in progress", history=True, pending=True, turn=turn)

    async def save_exchange(self, live: LiveSession) -> None:
        await self._save(live, "the exchange", history=True, pending=True)

    async def save_settings(self, live: LiveSession) -> None:
        await self._save(live, "the settings")

    async def save_history(self, live: LiveSession) -> None:
        await self._save(live, "the history", history=True)

    async def _save(
        self, live: LiveSession, what: str, history: bool = False, pending: bool = False, turn: PendingTurn | None = None
    ) -> None:
        """One session's writes, in order, each bounded by store_timeout_s. A failing store is logged
        and the session goes on in memory: the conversation must never break because the disk or Redis did."""
        async with live.saving:
            if live.forgotten:
                return
            try:
                live.used_at = time.time()
                await self.guard.call(self.store.save_meta, live.record())
                if history:  # only what changed since the last write that worked, every branch
                    change, snapshot = live.stored.change(live.session.conversation)
                    live.stored.lost()  # until this write is known to have worked
                    await self.guard.call(self.store.sync_tree, live.id, change)
                    live.stored.saved(snapshot)
                if pending:  # the turn in progress, or none
                    await self.guard.call(self.store.set_pending, live.id, turn)
            except StoreUnavailable:
                log.debug("session %s: saving %s failed; the session goes on in memory", live.id, what)
            except Exception:
                log.exception("session %s: saving %s failed; the session goes on in memory", live.id, what)

    def start(self) -> None:
        """Purge expired and least recently used sessions now, then every `PURGE_EVERY_S`."""
        self.spawn(self._purge_forever())

    async def _purge_forever(self) -> None:
        with contextlib.suppress(StoreUnavailable):  # said by the guard; sessions are not durable meanwhile
            await self.guard.call(self.store.open)
        while True:
            try:
                purged = await self.guard.call(self.store.purge, time.time())
                if purged:
                    log.info("purged %d stored sessions", purged)
            except StoreUnavailable:
                pass
            await asyncio.sleep(PURGE_EVERY_S)

    def spawn(self, work: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for task in list(self._tasks):
            if task.get_coro().__name__ == "_purge_forever":  # type: ignore[union-attr]
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()
