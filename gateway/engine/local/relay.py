"""Hands engine events from the generation thread to event loops: one wake-up per batch, bounded backlog."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

Event = tuple[Callable[..., None], tuple[Any, ...]]


class EventRelay:
    """Events for each loop collect in a list; the loop is woken once and drains it all. While a loop
    is behind, new events join the waiting list instead of scheduling more wake-ups; past
    `max_backlog` undelivered events the generation thread waits, so memory stays bounded."""

    def __init__(self, max_backlog: int = 65_536) -> None:
        self._lock = threading.Condition()
        self._pending: dict[asyncio.AbstractEventLoop, list[Event]] = {}
        self._staged: dict[asyncio.AbstractEventLoop, list[Event]] = {}
        self._backlog = 0
        self._max_backlog = max_backlog

    def emit(self, loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
        """Stage an event (generation thread); it is delivered at the next `flush`."""
        self._staged.setdefault(loop, []).append((callback, args))

    def flush(self, timeout_s: float = 5.0) -> None:
        """Deliver everything staged since the last flush (generation thread)."""
        staged, self._staged = self._staged, {}
        with self._lock:
            for loop, events in staged.items():
                waiting = self._pending.get(loop)
                self._pending.setdefault(loop, []).extend(events)
                self._backlog += len(events)
                if waiting is None:
                    try:
                        loop.call_soon_threadsafe(self._drain, loop)
                    except RuntimeError:  # that loop is closed: nobody is listening any more
                        self._backlog -= len(self._pending.pop(loop))
            # A loop that stopped draining must not stall generation forever: wait a bounded time.
            if self._backlog > self._max_backlog:
                self._lock.wait_for(lambda: self._backlog <= self._max_backlog, timeout_s)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            events = self._pending.pop(loop, [])
            self._backlog -= len(events)
            self._lock.notify_all()
        for callback, args in events:
            callback(*args)
