"""What each client frame does to a connection's session, one handler per frame type, dispatched by a table."""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.config import Settings
from gateway.core.grammar_pool import CompileQuota
from gateway.core.ratelimit import TokenBucket
from gateway.core.request import TurnRequest
from gateway.core.session import Session
from gateway.core.turns import StartedTurn, TurnService
from gateway.errors import ErrorCode, GatewayError, RetryLater
from gateway.ws import protocol as p
from gateway.ws.hub import SessionHub
from gateway.ws.live_session import LiveSession
from gateway.ws.replies import history_frame, session_defaults
from gateway.ws.states import ConnectionState
from gateway.ws.turn_frames import TurnFrames


class FrameHandlers:
    """The handlers, as the connection's own methods (the connection owns the socket, the reader and the writer;
    these own what a frame means). Each runs on the reader task: the next frame waits until it returns."""

    settings: Settings
    hub: SessionHub
    turns: TurnService
    live: LiveSession
    owner: str
    client: str
    state: ConnectionState
    log: logging.LoggerAdapter  # type: ignore[type-arg]
    direct: collections.deque[p.ServerFrame]  # frames outside any journal (`resumed`)
    fresh: LiveSession | None  # the session of `ready`, until the client resumes another
    turned: bool  # a turn was started: `resume` is no longer allowed
    turn_rate: TokenBucket
    history_bytes: TokenBucket
    compiles: CompileQuota

    @property
    def session(self) -> Session:
        return self.live.session

    @property
    def active(self) -> StartedTurn | None:
        return self.live.active

    def put(self, frame: p.SessionFrame) -> None:
        raise NotImplementedError

    def switch_to(self, live: LiveSession) -> None:
        raise NotImplementedError

    async def handle(self, frame: p.ClientFrame) -> None:
        await HANDLERS[type(frame)](self, frame)

    async def reset(self, frame: p.ResetFrame) -> None:
        if self.active is not None:
            self.active.handle.cancel()
        self.session.reset()
        self.turns.images.hold(self.live.id, 0)
        await self.hub.save_history(self.live)
        self.put(p.ResetDoneFrame(id=frame.id))

    async def tool_result(self, frame: p.ToolResultFrame) -> None:
        self.turns.check_text(frame.content, "a tool result", "content")
        self.session.add_tool_result(frame.call_id, frame.content)
        await self.hub.save_history(self.live)

    async def ping(self, frame: p.PingFrame) -> None:
        self.put(p.PongFrame(id=frame.id))

    async def history(self, frame: p.HistoryRequestFrame) -> None:
        """The history; with images only within the client address's budget. A client that does not read
        them meets the slow-consumer rule like any other (send_timeout_s, max_outbox_frames)."""
        if frame.include_images:
            wait_s = self.history_bytes.take_bytes(float(self.session.image_bytes))
            if wait_s > 0:
                message = "history with images is sent at a bounded rate (history_image_bytes_per_second); try again later"
                raise RetryLater(ErrorCode.RATE_LIMITED, message, int(wait_s * 1000) + 1)
        self.put(history_frame(self.session, frame))

    async def resume(self, frame: p.ResumeFrame) -> None:
        """Take up the session `frame` names; this connection's fresh one is discarded."""
        if self.turned:
            raise GatewayError(ErrorCode.INVALID_FIELD, "resume must come before the connection's first turn")
        if frame.session == self.live.id:
            raise GatewayError(ErrorCode.INVALID_FIELD, "this connection already holds that session")
        live = await self.hub.resume(frame.session, frame.token, self.owner, self.client)
        if self.state is not ConnectionState.OPEN:
            return
        fresh = self.live if self.live is self.fresh else None  # only its own unused session is discarded
        # No await from the switch to the rewind: neither writer may take a frame of `live` in between.
        self.switch_to(live)
        replayed, gap = live.journal.rewind(frame.last_seq)
        self.direct.append(
            p.ResumedFrame(session=live.id, last_seq=live.journal.last_seq, replayed=replayed, gap=gap, id=frame.id)
        )
        if fresh is not None:
            self.fresh = None
            await self.hub.discard(fresh)
        self.log.info("resumed (%d frames replayed%s)", replayed, ", with a gap" if gap else "")

    async def forget(self, frame: p.ForgetFrame) -> None:
        old = self.live
        await self.hub.forget(old)  # a store that cannot delete it answers `store_unavailable`: nothing changed
        self.switch_to(self.hub.create(self.owner, self.client))
        self.fresh = self.live
        self.put(p.ForgottenFrame(session=self.live.id, resume_token=self.live.token, id=frame.id))

    async def start_turn(self, frame: p.TurnFrame) -> None:
        self._may_start()
        request = TurnRequest(
            id=frame.id, text=frame.text, images=frame.images, image_urls=frame.image_urls, options=frame.options
        )
        self.turned = True
        live = self.live
        frames = TurnFrames(self.hub.emit, live, frame.id)
        # The reader awaits this (no other frame of ours is read meanwhile), so the turn cannot race a reset.
        started = frames.started = await self.turns.start(live.session, request, frames, self.compiles, self.hub.keeper(live))
        live.active = started  # before any await: the turn's events may already be queued
        await self.hub.turn_started(live, started)

    async def regenerate(self, frame: p.RegenerateFrame) -> None:
        self._may_start()
        request = TurnRequest(id=frame.id, text="", options=frame.options)
        self.turned = True
        live = self.live
        frames = TurnFrames(self.hub.emit, live, frame.id)
        keeper = self.hub.keeper(live)
        started = await self.turns.regenerate(live.session, request, frame.item_id, frames, self.compiles, keeper)
        frames.started = live.active = started  # before any await, as for a turn
        await self.hub.turn_started(live, started)

    async def switch(self, frame: p.SwitchFrame) -> None:
        self._check_idle()
        self.session.switch(frame.item_id)
        await self.hub.save_history(self.live)
        await self.history(p.HistoryRequestFrame(id=frame.id))

    async def truncate(self, frame: p.TruncateFrame) -> None:
        self._check_idle()
        self.session.truncate(frame.item_id, frame.chars)
        await self.hub.save_history(self.live)
        await self.history(p.HistoryRequestFrame(id=frame.id))

    async def fork(self, frame: p.ForkFrame) -> None:
        """This connection stays on its session (a running turn goes on: the fork holds the path without it)."""
        forked = self.hub.fork(self.live, frame.item_id)
        await self.hub.save_history(forked)
        self.put(p.ForkedFrame(session=forked.id, resume_token=forked.token, id=frame.id))

    def _check_idle(self) -> None:
        """The history may change: no turn is running (its reply would join a path changed under it)."""
        if self.active is not None:
            raise GatewayError(ErrorCode.BUSY, f"turn {self.active.turn.id!r} is still running; cancel it or wait")

    def _may_start(self) -> None:
        """A turn (or a regenerate) may start: the server is open, none runs, the client is within its rate."""
        self.turns.check_open()
        self._check_idle()
        wait_s = self.turn_rate.take()
        if wait_s > 0:
            raise RetryLater(ErrorCode.RATE_LIMITED, "too many turns; slow down", int(wait_s * 1000) + 1)

    async def cancel(self, frame: p.CancelFrame) -> None:
        turn_id = frame.id
        if self.active is None or self.active.turn.id != turn_id:
            raise GatewayError(ErrorCode.NOT_FOUND, f"no running turn with id {turn_id!r}")
        self.active.handle.cancel()

    async def configure(self, frame: p.ConfigureFrame) -> None:
        options = p.SamplingOptions(**{k: getattr(frame, k) for k in p.SamplingOptions.__struct_fields__})
        self.turns.check_options(options)
        await self.turns.check_grammars(options, self.compiles)
        self.session.configure(frame.system, options)
        await self.hub.save_settings(self.live)
        self.put(p.ConfiguredFrame(defaults=session_defaults(self.turns, self.session), id=frame.id))


Handler = Callable[[FrameHandlers, Any], Awaitable[None]]
HANDLERS: dict[type, Handler] = {
    p.TurnFrame: FrameHandlers.start_turn,
    p.CancelFrame: FrameHandlers.cancel,
    p.ResetFrame: FrameHandlers.reset,
    p.ConfigureFrame: FrameHandlers.configure,
    p.HistoryRequestFrame: FrameHandlers.history,
    p.ResumeFrame: FrameHandlers.resume,
    p.ForgetFrame: FrameHandlers.forget,
    p.ToolResultFrame: FrameHandlers.tool_result,
    p.PingFrame: FrameHandlers.ping,
    p.RegenerateFrame: FrameHandlers.regenerate,
    p.SwitchFrame: FrameHandlers.switch,
    p.TruncateFrame: FrameHandlers.truncate,
    p.ForkFrame: FrameHandlers.fork,
}
