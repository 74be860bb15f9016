"""What each client frame does to a connection's session, one handler per frame type, dispatched by a table."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from gateway.config import Settings
from gateway.core.grammar_pool import CompileQuota
from gateway.core.ratelimit import TokenBucket
from gateway.core.request import TurnRequest
from gateway.core.turn_types import StartedTurn
from gateway.core.turns import TurnService
from gateway.errors import ErrorCode, GatewayError, RetryLater
from gateway.ws import protocol as p
from gateway.ws.editing import EditingHandlers
from gateway.ws.hub import SessionHub
from gateway.ws.live_frames import add_frame, live_view, unread_view, yield_watch
from gateway.ws.live_session import LiveSession
from gateway.ws.replies import history_frame, session_defaults
from gateway.ws.states import ConnectionState, LiveState
from gateway.ws.token_scope import TokenScope
from gateway.ws.turn_frames import TurnFrames
from gateway.ws.watch import WATCH, WatchSpec, stop_watch, watch_loop

log = logging.getLogger("gateway.ws.endpoint")


class FrameHandlers(EditingHandlers):
    """A connection's side of its session, without the socket: what each client frame means, one handler per
    frame type. The connection (ws/connection.py) adds the socket, the reader and the writer; tests drive these
    handlers with no socket at all (tests/test_handlers.py). Each runs on the reader task: the next frame waits
    until it returns. Frames for the client go to the session's journal (`put`), or to `direct`."""

    def __init__(self, settings: Settings, hub: SessionHub, client: str, owner: str, traceparent: str | None) -> None:
        self.settings = settings
        self.hub = hub
        self.turns: TurnService = hub.turns
        self.owner = owner
        self.client = client  # the address whose quota its sessions count in
        self.traceparent = traceparent  # the W3C trace context of the handshake: each turn a span in that trace
        self.live = hub.create(owner, client)
        self.fresh: LiveSession | None = self.live  # the session of `ready`, until the client resumes another
        self.state = ConnectionState.CONNECTING
        self.log: logging.LoggerAdapter = SessionLog(log, {"session": self.live.id})  # type: ignore[type-arg]
        self.direct: collections.deque[p.ServerFrame] = collections.deque()  # frames outside any journal (`resumed`)
        self.turned = False  # a turn was started: `resume` is no longer allowed
        self.turn_rate = TokenBucket(rate=settings.turns_per_minute / 60, burst=max(1.0, settings.turns_per_minute / 6))
        # Image bytes sent in `history` frames: 60 bytes of request must not buy megabytes of reply at will,
        # and the budget is the client address's, so reconnecting buys no fresh one.
        self.history_bytes = hub.history_budgets.get(client)
        self.compiles: CompileQuota = self.turns.grammars.quota(client)
        self.scope: TokenScope | None = None  # the scoped token's restrictions, when one opened the connection

    @property
    def active(self) -> StartedTurn | None:
        return self.live.active

    def put(self, frame: p.SessionFrame) -> None:
        """A frame of this connection's session: numbered, kept for replay, streamed when attached."""
        self.hub.emit(self.live, frame)

    def switch_to(self, live: LiveSession) -> None:
        raise NotImplementedError

    async def handle(self, frame: p.ClientFrame) -> None:
        if self.scope is not None:  # opened with a scoped token: only what it allows
            frame = self.scope.admit(frame, self.session)
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
        self.turns.check_open()
        live = self.live
        async with live.starting:  # no watch turn starts meanwhile
            await yield_watch(live)
            if self.active is not None:
                raise GatewayError(ErrorCode.BUSY, f"turn {self.active.turn.id!r} is still running; cancel it or wait")
            wait_s = self.turn_rate.take()
            if wait_s > 0:
                raise RetryLater(ErrorCode.RATE_LIMITED, "too many turns; slow down", int(wait_s * 1000) + 1)
            request = TurnRequest(
                id=frame.id,
                text=frame.text,
                images=frame.images,
                image_urls=frame.image_urls,
                options=frame.options,
                videos=frame.videos,
                live=live_view(live, frame.live),
                traceparent=self.traceparent,  # the handshake's: each turn a span in that trace
            )
            self.turned = True
            await self._start(live, request)

    async def _start(self, live: LiveSession, request: TurnRequest, initiated: str | None = None) -> TurnFrames:
        frames = TurnFrames(self.hub.emit, live, request.id, initiated)
        # The reader awaits this (no other frame of ours is read meanwhile), so the turn cannot race a reset.
        started = frames.started = await self.turns.start(live.session, request, frames, self.compiles, self.hub.keeper(live))
        live.active = started  # before any await: the turn's events may already be queued
        if request.live is not None and initiated is None:  # the next is warmed up ahead where they come on a clock
            needed = self.settings.live_warm_up_frames
            self.turns.warm_ups.expect(live.session, partial(unread_view, live, request.live.source, needed))
        await self.hub.turn_started(live, started)
        return frames

    async def watch(self, frame: p.WatchFrame) -> None:
        """One watch per session: a new one replaces the last."""
        self.turns.check_images(1, "source")
        self.turns.check_text(frame.text, "a watch's text")
        self.turns.check_options(p.SamplingOptions(max_tokens=frame.max_tokens))
        if frame.every_s < self.settings.min_watch_every_s:
            message = f"every_s is at least {self.settings.min_watch_every_s:g}"
            raise GatewayError(ErrorCode.INVALID_FIELD, message, field="every_s")
        live = self.live
        stop_watch(live)
        spec = WatchSpec(frame.source, frame.every_s, frame.text, frame.max_tokens)

        async def start(request: TurnRequest) -> asyncio.Event | None:
            async with live.starting:
                if live.active is not None or live.state is LiveState.GONE:
                    return None
                frames = await self._start(live, request, WATCH)
                live.watched = (live.active, frames.ended) if live.active is not None else None
                return frames.ended

        def refuse(turn_id: str, exc: GatewayError) -> None:
            retry_after_ms = exc.retry_after_ms if isinstance(exc, RetryLater) else None
            self.hub.emit(live, p.ErrorFrame(code=exc.code.value, message=exc.message, id=turn_id, retry_after_ms=retry_after_ms))

        def announce(due_s: float | None) -> None:
            if live.watcher is not watcher and live.watcher is not None:
                return  # a newer watch has replaced this one (its end comes after): that one's ticks count
            unread = partial(unread_view, live, spec.source, self.settings.live_warm_up_frames)
            self.turns.warm_ups.announce(live.session, due_s, unread)

        watcher = asyncio.get_running_loop().create_task(watch_loop(live, spec, start, refuse, announce))
        live.watcher = watcher

    async def unwatch(self, frame: p.UnwatchFrame) -> None:
        if not stop_watch(self.live):
            raise GatewayError(ErrorCode.NOT_FOUND, "this session has no watch")

    async def cancel(self, frame: p.CancelFrame) -> None:
        turn_id = frame.id
        if self.active is None or self.active.turn.id != turn_id:
            raise GatewayError(ErrorCode.NOT_FOUND, f"no running turn with id {turn_id!r}")
        self.active.handle.cancel()

    async def live_frame(self, frame: p.LiveImageFrame) -> None:
        await add_frame(self.live, frame, self.turns)

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
    p.LiveImageFrame: FrameHandlers.live_frame,
    p.WatchFrame: FrameHandlers.watch,
    p.UnwatchFrame: FrameHandlers.unwatch,
    p.RegenerateFrame: FrameHandlers.regenerate,
    p.SwitchFrame: FrameHandlers.switch,
    p.TruncateFrame: FrameHandlers.truncate,
    p.ForkFrame: FrameHandlers.fork,
    p.EditFrame: FrameHandlers.edit,
    p.InsertFrame: FrameHandlers.insert,
    p.DeleteFrame: FrameHandlers.delete,
}


class SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Every line a connection logs starts with its session id (the one `ready` told the client)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"session {self.extra['session'] if self.extra else '?'}: {msg}", kwargs
