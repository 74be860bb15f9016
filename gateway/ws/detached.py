"""Sessions nobody streams, oldest first: their turns yield the engine to attached clients, and they are
the first out of memory when a client's quota or the image ledger needs room."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

from gateway.engine.contract import EngineLoad, TurnHandle

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
    """Detached sessions in the order they were left. Invariant: a session is `yielding` from the moment its
    turn is stopped here until that turn ends, so no turn is stopped (or counted) twice."""

    def __init__(self, on_preempt: Callable[[], None] = lambda: None) -> None:
        self._sessions: dict[str, S] = {}
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

    def make_room(self, waiting: int) -> int:
        """`waiting` attached turns would wait for a slot that no cancelled turn frees (the caller counts
        only turns nobody cancelled, and a turn stopped here is cancelled at once): stop that many detached
        turns, oldest first. Returns how many were stopped."""
        stopped = 0
        for session in self:
            if stopped >= waiting:
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
        self._on_preempt()
        log.info("session %s: its detached turn yields to attached clients'", session.id)
        return True

    def turn_ended(self, session: S) -> None:
        session.yielding = False


def others_waiting(load: Callable[[], EngineLoad], handle: TurnHandle) -> int:
    """Turns waiting for a slot besides `handle`'s own (which the engine counts while it waits). The engine
    admits on its own thread: a load read while the turn was being admitted is read again, so that the
    two answers describe one moment (admission happens once, so this settles at the second read)."""
    while True:
        admitted = handle.admitted.is_set()
        waiting = load().waiting
        if handle.admitted.is_set() == admitted:
            return waiting - (0 if admitted else 1)
