"""Live sessions: created by connections, kept through a grace period after the socket goes, resumed
by token, saved to the session store as they change."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time

from gateway.config import Settings
from gateway.core.ratelimit import BucketsByAddress
from gateway.core.session import Session
from gateway.core.store.base import SessionMeta, SessionRecord, SessionStore
from gateway.core.store.guard import StoreGuard, StoreUnavailable
from gateway.core.turn_types import StartedTurn
from gateway.core.turns import TurnService
from gateway.edge.quota import SessionQuota
from gateway.engine.contract import GenerationResult
from gateway.errors import ErrorCode, GatewayError, RetryLater
from gateway.logs import turn_fields
from gateway.ws import protocol as p
from gateway.ws.detached import DetachedSessions, others_waiting
from gateway.ws.journal import Journal
from gateway.ws.live_session import NOBODY, Attachment, LiveSession, token_hash
from gateway.ws.saving import SessionSaving
from gateway.ws.states import LiveState

log = logging.getLogger("gateway.sessions")

RESUME_FAILED = "the session cannot be resumed: unknown, expired, or the token does not match"
STORE_UNAVAILABLE = "the session store is unavailable; try again later"
SEQ_AFTER_RESTART = 1 << 20  # seqs jump after a restart, so none is ever given out twice


class SessionHub(SessionSaving):
    """Every live session by id. The hub owns their lifetimes: a session outlives its connection for
    `session_grace_s`, its running turn generating to the end with its frames kept for replay."""

    def __init__(self, settings: Settings, turns: TurnService, store: SessionStore) -> None:
        self.settings = settings
        self.turns = turns
        self.store = store
        self.guard = StoreGuard(store.persistent, settings.store_timeout_s, turns.metrics.store_failures.inc)
        self.live: dict[str, LiveSession] = {}
        rate = float(settings.history_image_bytes_per_second)  # image bytes `history` sends, per address
        self.history_budgets = BucketsByAddress(rate, max(rate, float(settings.max_session_image_bytes)))
        self.quota: SessionQuota[LiveSession] = SessionQuota(settings.max_sessions_per_client, settings.max_sessions_per_key)
        self.detached: DetachedSessions[LiveSession] = DetachedSessions(turns.metrics.preempted.inc)
        turns.make_room = self.detached.make_room  # an attached client's turn never waits behind a detached one
        turns.free_images = self.free_images  # nor lacks image room that a detached session holds
        self._tasks: set[asyncio.Task[None]] = set()

    def create(self, owner: str, client: str) -> LiveSession:
        """A new session of `client` (an address). The quota is enforced when a session is left (see
        `detach`), not here: a reconnecting client's fresh session must not unload the one it resumes."""
        for old in list(self.quota.over(client, owner, adding=0)):
            log.info("session %s: unloaded for a new session of the same client (max_sessions_per_client)", old.id)
            self.unload(old)
        session = Session(max_history_turns=self.settings.max_history_turns, max_siblings=self.settings.max_siblings)
        live = LiveSession(session, secrets.token_urlsafe(24), owner, self._journal(), client=client)
        self.live[live.id] = live
        self.quota.add(live)
        return live

    def fork(self, source: LiveSession, item_id: str | None) -> LiveSession:
        """A new session of the same owner and client holding `source`'s path down to `item_id` (default: its
        active path), with the same item ids, system prompt and defaults. It starts detached, as a session
        whose socket went does: taken up with `resume`, unloaded after `session_grace_s` if nobody does."""
        tree = source.session.conversation.fork(item_id)  # an unknown id is refused before anything is made
        live = self.create(source.owner, source.client)
        live.session.adopt(tree, source.session)
        live.used_at, live.detached_at = time.time(), time.monotonic()
        self.detached.add(live)
        self.turns.images.hold(live.id, live.session.held_image_bytes)
        if self.settings.session_grace_s <= 0:
            self.unload(live)
        else:
            live.expiry = asyncio.get_running_loop().call_later(self.settings.session_grace_s, self.unload, live)
        return live

    def _journal(self, next_seq: int = 1) -> Journal:
        return Journal(self.settings.session_replay_bytes, self.settings.max_outbox_frames, next_seq)

    # ---- attach, detach, resume, forget --------------------------------------------------------------

    def attach(self, live: LiveSession, connection: Attachment, client: str) -> None:
        """`connection` streams this session from now on; one it was attached to is closed with 4003."""
        if live.expiry is not None:
            live.expiry.cancel()
            live.expiry = None
        live.detached_at = None
        self.detached.discard(live)
        live.move(LiveState.ATTACHED)
        previous, live.attached = live.attached, connection
        if live.client != client:
            self.quota.move(live, client)
            for old in list(self.quota.over(client, live.owner, adding=0)):
                self.unload(old)
        if previous is not None and previous is not connection:
            previous.taken_over()

    def detach(self, live: LiveSession, connection: Attachment, cancel_turn: bool = False) -> None:
        """The connection has gone: the session stays for the grace period (0: it goes now)."""
        if live.attached is not connection:
            return  # taken over: the session belongs to another connection now
        if live.state is LiveState.GONE:  # forgotten while attached: nothing stays
            live.attached = None
            return
        live.move(LiveState.DETACHED)
        live.attached = None
        live.used_at = time.time()
        live.detached_at = time.monotonic()
        self.detached.add(live)
        for old in list(self.quota.over(live.client, live.owner, adding=0)):  # over while all were attached
            self.unload(old)
        if cancel_turn and live.active is not None:
            live.active.handle.cancel()
        elif live.active is not None and others_waiting(self.turns.engine.load, live.active.handle) > 0:
            self.detached.stop(live)  # others wait for a slot, and nobody listens to this turn any more
        if self.settings.session_grace_s <= 0:
            self.unload(live)
        else:
            loop = asyncio.get_running_loop()
            live.expiry = loop.call_later(self.settings.session_grace_s, self.unload, live)

    def unload(self, live: LiveSession) -> None:
        """Out of memory: its turn is cancelled if still running; it stays resumable from the store."""
        if live.attached is not None or self.live.get(live.id) is not live:
            return
        if live.active is not None:
            live.active.handle.cancel()
        if live.expiry is not None:
            live.expiry.cancel()
        del self.live[live.id]
        self._drop(live)

    def _drop(self, live: LiveSession) -> None:
        """`live` left memory: it no longer counts against its client's quota or the image ledger. (A session
        both unloaded by a quota and then discarded by its connection goes once: the second time changes nothing.)"""
        if live.state is not LiveState.GONE:
            live.move(LiveState.GONE)
        if live.watcher is not None:
            live.watcher.cancel()
        self.quota.remove(live)
        self.detached.discard(live)
        self.turns.forget(live.session)

    async def resume(self, session_id: str, token: str, owner: str, client: str = "") -> LiveSession:
        """The live session, or the stored one loaded again. Every id costs the same before the token
        is known good (one small lookup, one hash, the same compares) and every refusal is `resume_failed`;
        the history is read only for the right token."""
        live = self.live.get(session_id)
        try:
            stored = await self.guard.call(self.store.load_meta, session_id)
        except StoreUnavailable:
            if live is None:
                raise GatewayError(ErrorCode.STORE_UNAVAILABLE, STORE_UNAVAILABLE) from None
            stored = None  # a live session resumes without the store
        if not self._accepts(live.meta() if live is not None else stored, token, owner):
            raise GatewayError(ErrorCode.RESUME_FAILED, RESUME_FAILED)
        if live is not None and self.live.get(session_id) is live:
            return live  # (unloaded while the store answered: it is loaded again below)
        try:
            record = await self.guard.call(self.store.load, session_id)
        except StoreUnavailable:
            raise GatewayError(ErrorCode.STORE_UNAVAILABLE, STORE_UNAVAILABLE) from None
        if record is None:  # forgotten meanwhile
            raise GatewayError(ErrorCode.RESUME_FAILED, RESUME_FAILED)
        return self._revive(record, token, client)

    def _accepts(self, meta: SessionMeta | None, token: str, owner: str) -> bool:
        known = meta or NOBODY
        token_ok = hmac.compare_digest(known.token_hash, token_hash(token))
        owner_ok = hmac.compare_digest(known.owner, owner)
        return meta is not None and token_ok and owner_ok and not self._expired(known.updated_at)

    def _expired(self, updated_at: float) -> bool:
        return time.time() - updated_at > self.settings.session_ttl_s

    def _revive(self, record: SessionRecord, token: str, client: str) -> LiveSession:
        if record.id in self.live:  # loaded meanwhile by a concurrent resume
            return self.live[record.id]
        session = record.session(self.settings.max_history_turns, self.settings.max_siblings)
        self._make_image_room(record.id, session.held_image_bytes)
        for old in list(self.quota.over(client, record.owner, adding=0)):  # the caller's fresh session goes next
            self.unload(old)
        live = LiveSession(session, token, record.owner, self._journal(record.last_seq + SEQ_AFTER_RESTART), client=client)
        if record.tree is not None and record.pending is None:  # the store holds this tree: its save is the head
            live.stored.loaded(session.conversation)
        self.live[live.id] = live
        self.quota.add(live)
        self.turns.images.hold(live.id, session.held_image_bytes)
        # Its resumer attaches it at once; should that connection be gone meanwhile, it still expires.
        live.expiry = asyncio.get_running_loop().call_later(max(0.0, self.settings.session_grace_s), self.unload, live)
        self.spawn(self._save(live, "the revived session", history=True, pending=True))  # the partial turn joined the history
        return live

    def _make_image_room(self, session_id: str, nbytes: int) -> None:
        """Room in the image ledger for a session coming back into memory: detached sessions holding
        images are unloaded first (they stay resumable); attached ones are never pushed out."""
        if nbytes > self.free_images(session_id, nbytes):
            message = "the server holds all the images it can; this session cannot be loaded now, try again later"
            raise RetryLater(ErrorCode.OVERLOADED, message, self.turns.retry_after_ms())

    def free_images(self, session_id: str, nbytes: int, needed: int | None = None) -> int:
        """Unload detached sessions holding images, oldest first, until `session_id` may hold `nbytes`;
        returns the room it has then. None is unloaded when unloading all of them would still leave less
        than `needed` (default `nbytes`): the caller refuses then, and they would have gone for nothing."""
        ledger = self.turns.images
        holders = [old for old in self.detached if old.id != session_id and ledger.holds(old.id)]
        if ledger.room_for(session_id) + sum(ledger.held(old.id) for old in holders) < (nbytes if needed is None else needed):
            return ledger.room_for(session_id)
        for old in holders:
            if nbytes <= ledger.room_for(session_id):
                break
            log.info("session %s: unloaded to make room for an attached session's images", old.id)
            self.unload(old)
        return ledger.room_for(session_id)

    async def forget(self, live: LiveSession) -> None:
        """Gone now, from the store and then from memory; a store that cannot delete it answers
        `store_unavailable` and the session stays as it was."""
        async with live.saving:  # after the session's own writes, so that none brings it back
            try:
                await self.guard.call(self.store.delete, live.id)
            except StoreUnavailable:
                raise GatewayError(ErrorCode.STORE_UNAVAILABLE, STORE_UNAVAILABLE) from None
            live.forgotten = True
        if live.active is not None:
            live.active.handle.cancel()
        if self.live.get(live.id) is live:
            del self.live[live.id]
        self._drop(live)

    async def discard(self, live: LiveSession) -> None:
        """A connection's unused fresh session: out of memory at once (its connection may close while
        the store answers), then out of the store if it answers."""
        live.forgotten = True  # writes queued from now on are skipped
        if self.live.get(live.id) is live:
            del self.live[live.id]
        self._drop(live)
        async with live.saving:
            with contextlib.suppress(StoreUnavailable):
                await self.guard.call(self.store.delete, live.id)

    # ---- frames and turns -------------------------------------------------------------------------

    def emit(self, live: LiveSession, frame: p.SessionFrame) -> None:
        live.journal.append(frame)
        if live.attached is None and live.active is not None and live.journal.overflowing:
            log.info("session %s: replay budget full while detached; stopping its turn", live.id)
            live.active.handle.cancel()

    def keeper(self, live: LiveSession) -> LiveKeeper:
        """What the turn service tells of `live`'s turn's end, which it owns: recording, the store, `done`."""
        return LiveKeeper(self, live)


class LiveKeeper:
    """The hub's side of a turn's end (gateway.core.turns.SessionKeeper), for one live session."""

    def __init__(self, hub: SessionHub, live: LiveSession) -> None:
        self._hub = hub
        self._live = live

    def turn_ended(self, started: StartedTurn, result: GenerationResult) -> bool:
        log.info("session %s: turn ended (%s)", self._live.id, result.finish_reason, extra=turn_fields(result))
        self._live.ended = started  # from now on it holds no slot: it must not be stopped for anyone
        self._hub.detached.turn_ended(self._live)
        return self._hub.live.get(self._live.id) is self._live

    def persist(self, started: StartedTurn) -> asyncio.Task[None]:
        return self._hub.spawn(self._hub.save_exchange(self._live))
