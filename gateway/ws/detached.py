"""Sessions nobody streams, oldest first: their turns yield the engine to attached clients, and they are
the first out of memory when a client's quota or the image ledger needs room."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

log = logging.getLogger("gateway.sessions")


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class DetachedSession(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def running(self) -> Cancellable | None:
        """The grip on its turn while one runs."""
        ...

    yielding: bool  # its turn was stopped for an attached client's and has not ended yet


S = TypeVar("S", bound=DetachedSession)


class DetachedSessions(Generic[S]):
    """Detached sessions in the order they were left. Invariant: `stopping` counts the turns stopped for
    attached clients that have not ended yet, so two turns arriving in one engine step do not both stop
    a detached turn for the same free slot."""

    def __init__(self, on_preempt: Callable[[], None] = lambda: None) -> None:
        self._sessions: dict[str, S] = {}
        self.stopping = 0
        self._on_preempt = on_preempt

    def add(self, session: S) -> None:
        self._sessions.pop(session.id, None)
        self._sessions[session.id] = session

    def discard(self, session: S) -> None:
        self._sessions.pop(session.id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[S]:
        return iter(list(self._sessions.values()))

    def make_room(self, waiting: int, cancelled: int = 0) -> int:
        """`waiting` attached turns would wait for a slot: stop that many detached turns, oldest first,
        less those already stopping, or less every turn already cancelled when the caller counts them
        (`cancelled`: a turn its client cancelled frees its slot as soon as one stopped here). Returns how
        many were stopped now."""
        stopped = 0
        freeing = max(self.stopping, cancelled)
        for session in self:
            if waiting - freeing - stopped <= 0:
                break
            if self.stop(session):
                stopped += 1
        return stopped

    def stop(self, session: S) -> bool:
        """Cancel `session`'s running turn for attached clients' (False: none runs, or it is stopping)."""
        running = session.running
        if running is None or session.yielding:
            return False
        running.cancel()
        session.yielding = True
        self.stopping += 1
        self._on_preempt()
        log.info("session %s: its detached turn yields to attached clients'", session.id)
        return True

    def turn_ended(self, session: S) -> None:
        if session.yielding:
            session.yielding = False
            self.stopping -= 1
