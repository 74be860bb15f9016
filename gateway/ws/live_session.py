"""A session in memory: its conversation, replay journal and resume secret, the connection streaming it
(if any), its running turn, and whose quota it counts in."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Protocol

from gateway.core.live_window import LiveWindows
from gateway.core.session import Session
from gateway.core.store.base import SessionMeta, SessionRecord
from gateway.core.store.tree_sync import StoredTree
from gateway.core.turn_types import StartedTurn
from gateway.engine.contract import TurnHandle
from gateway.ws.journal import Journal
from gateway.ws.states import LIVE_MOVES, LiveState, moved


class Attachment(Protocol):
    """The connection a live session streams to."""

    def taken_over(self) -> None: ...


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# What an unknown id is checked against, so that every refusal hashes and compares the same way.
NOBODY = SessionMeta(id="", token_hash=token_hash(secrets.token_urlsafe(24)), owner="\x00", updated_at=0.0)


@dataclass(eq=False)
class LiveSession:
    session: Session
    token: str
    owner: str
    journal: Journal
    attached: Attachment | None = None
    active: StartedTurn | None = None
    expiry: asyncio.TimerHandle | None = None
    used_at: float = field(default_factory=time.time)
    saving: asyncio.Lock = field(default_factory=asyncio.Lock)  # one store write sequence at a time, in order
    forgotten: bool = False  # deleted from the store: no later write may bring it back
    stored: StoredTree = field(default_factory=StoredTree)  # what the store holds of its tree, as last written here
    token_hash: str = ""

    client: str = ""  # the address of the connection that created or last attached it (its quota)
    detached_at: float | None = None  # when its connection went (monotonic); None while attached
    yielding: bool = False  # its detached turn was stopped for an attached client's and has not ended yet

    state: LiveState = LiveState.DETACHED
    windows: LiveWindows | None = None  # its cameras' and screens' latest frames: "now", never stored
    watcher: asyncio.Task[None] | None = None  # its watch: a live turn now and then (one per session)
    watched: tuple[StartedTurn, asyncio.Event] | None = None  # the watch's turn running, and its end
    starting: asyncio.Lock = field(default_factory=asyncio.Lock)  # the client's turns and the watch's start one at a time

    def __post_init__(self) -> None:
        self.token_hash = token_hash(self.token)  # once: a resume's check hashes only the offered token

    def move(self, to: LiveState) -> None:
        self.state = moved(self.state, to, LIVE_MOVES, "live session")

    ended: StartedTurn | None = None  # the last turn the engine finished (`active` stays until its `done` is sent)

    @property
    def running(self) -> TurnHandle | None:
        """The grip on a turn still on the engine; None once it has ended, even while its `done` waits for the store."""
        return None if self.active is None or self.active is self.ended else self.active.handle

    @property
    def id(self) -> str:
        return self.session.id

    def meta(self) -> SessionMeta:
        return SessionMeta(self.id, self.token_hash, self.owner, time.time())  # live: never expired

    def record(self) -> SessionRecord:
        s = self.session
        return SessionRecord(
            s.id,  # who may resume it, as in `meta`
            self.token_hash,
            self.owner,
            system=s.system,
            defaults=s.defaults,
            last_seq=self.journal.last_seq,
            updated_at=self.used_at,
        )
