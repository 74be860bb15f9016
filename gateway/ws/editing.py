"""The frames that edit a session's conversation (regenerate, edit, insert, delete, switch, truncate, fork)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.core.grammar_pool import CompileQuota
from gateway.core.items import Content, Role
from gateway.core.ratelimit import TokenBucket
from gateway.core.regenerate import Revision, edit as edit_turn, load_images, regenerate as regenerate_turn
from gateway.core.request import SamplingOptions, TurnRequest
from gateway.core.session import Session
from gateway.core.turn_types import SessionKeeper, StartedTurn
from gateway.core.turns import TurnService
from gateway.errors import ErrorCode, GatewayError, RetryLater
from gateway.ws import protocol as p
from gateway.ws.hub import SessionHub
from gateway.ws.live_frames import yield_watch
from gateway.ws.live_session import LiveSession
from gateway.ws.turn_frames import TurnFrames

# Starts a reply's turn on the engine, given the request, its frames (the listener) and its keeper.
Start = Callable[[TurnRequest, TurnFrames, SessionKeeper], Awaitable[StartedTurn]]


class EditingHandlers:
    """FrameHandlers' (ws/handlers.py) handlers of the editing frames. Every change is refused with `busy` while
    a turn runs (its reply would join a path changed under it); each is answered by `history`, or streamed
    as a turn where it makes a reply."""

    hub: SessionHub
    turns: TurnService
    live: LiveSession
    compiles: CompileQuota
    traceparent: str | None
    turned: bool
    turn_rate: TokenBucket

    @property
    def session(self) -> Session:
        return self.live.session

    def put(self, frame: p.SessionFrame) -> None:
        raise NotImplementedError

    async def history(self, frame: p.HistoryRequestFrame) -> None:
        raise NotImplementedError

    async def regenerate(self, frame: p.RegenerateFrame) -> None:
        async def start(request: TurnRequest, frames: TurnFrames, keeper: SessionKeeper) -> StartedTurn:
            return await regenerate_turn(self.turns, self.session, request, frame.item_id, frames, self.compiles, keeper)

        await self._reply(frame.id, frame.options, start)

    async def edit(self, frame: p.EditFrame) -> None:
        """With `respond`, a turn (as `regenerate`); without, a change answered by `history`."""
        self.turns.check_text(frame.text or "", "an edited message")
        if frame.respond:
            if frame.id is None:
                raise GatewayError(ErrorCode.INVALID_FIELD, "an edit that responds names its turn: id", field="id")
            revision = Revision(frame.item_id, frame.text, frame.images)

            async def start(request: TurnRequest, frames: TurnFrames, keeper: SessionKeeper) -> StartedTurn:
                return await edit_turn(self.turns, self.session, request, revision, frames, self.compiles, keeper)

            await self._reply(frame.id, frame.options, start)
            return
        self._check_idle()
        images = await load_images(self.turns, self.session, frame.images) if frame.images is not None else None
        self._check_idle()  # (a turn may have started while the images loaded)
        self.session.edit(frame.item_id, frame.text, images)
        await self._changed(frame.id)

    async def insert(self, frame: p.InsertFrame) -> None:
        self._check_idle()
        self.turns.check_text(frame.text, "an inserted message")
        if frame.images and frame.role != "user":
            raise GatewayError(ErrorCode.INVALID_FIELD, "only a user message holds images", field="images")
        images = await load_images(self.turns, self.session, frame.images) if frame.images else ()
        self._check_idle()  # (a turn may have started while the images loaded)
        self.session.insert(frame.after, Content(Role(frame.role), frame.text, images))
        await self._changed(frame.id)

    async def delete(self, frame: p.DeleteFrame) -> None:
        self._check_idle()
        self.session.delete(frame.item_id)
        await self._changed(frame.id)

    async def switch(self, frame: p.SwitchFrame) -> None:
        self._check_idle()
        self.session.switch(frame.item_id)
        await self._changed(frame.id)

    async def truncate(self, frame: p.TruncateFrame) -> None:
        self._check_idle()
        self.session.truncate(frame.item_id, frame.chars)
        await self._changed(frame.id)

    async def fork(self, frame: p.ForkFrame) -> None:
        """This connection stays on its session. Not while a turn runs: the fork would miss its exchange."""
        self._check_idle()
        forked = self.hub.fork(self.live, frame.item_id)
        await self.hub.save_history(forked)
        self.put(p.ForkedFrame(session=forked.id, resume_token=forked.token, id=frame.id))

    async def _reply(self, turn_id: str, options: SamplingOptions | None, start: Start) -> None:
        """A reply streamed as turn `turn_id`, started by `start` once no other turn runs."""
        live = self.live
        async with live.starting:  # as a turn: no watch turn starts meanwhile, a running one gives way
            await yield_watch(live)
            self._may_start()
            request = TurnRequest(id=turn_id, text="", options=options, traceparent=self.traceparent)
            self.turned = True
            frames = TurnFrames(self.hub.emit, live, turn_id)
            started = await start(request, frames, self.hub.keeper(live))
            frames.started = live.active = started  # before any await, as for a turn
            await self.hub.turn_started(live, started)

    async def _changed(self, frame_id: str | None) -> None:
        """The history changed: the image ledger and the store learn it, and the client gets `history`."""
        self.turns.images.hold(self.live.id, self.session.held_image_bytes)
        await self.hub.save_history(self.live)
        await self.history(p.HistoryRequestFrame(id=frame_id))

    def _check_idle(self) -> None:
        """The history may change: no turn is running (its reply would join a path changed under it)."""
        if self.live.active is not None:
            raise GatewayError(ErrorCode.BUSY, f"turn {self.live.active.turn.id!r} is still running; cancel it or wait")

    def _may_start(self) -> None:
        """A reply may start: the server is open, no turn runs, the client is within its rate."""
        self.turns.check_open()
        self._check_idle()
        wait_s = self.turn_rate.take()
        if wait_s > 0:
            raise RetryLater(ErrorCode.RATE_LIMITED, "too many turns; slow down", int(wait_s * 1000) + 1)
