"""One WebSocket connection: a reader task and a writer task around a session and the turn service."""

from __future__ import annotations

import asyncio
import collections
import enum
import hashlib
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway import protocol as p
from gateway.config import Settings
from gateway.engine.types import GenerationResult, ToolCall
from gateway.errors import CloseCode, ConnectionClosing, ErrorCode, GatewayError, RetryLater
from gateway.hub import SessionHub
from gateway.journal import Journal
from gateway.live_session import LiveSession
from gateway.metrics import Metrics
from gateway.ratelimit import TokenBucket
from gateway.replies import history_frame, limits_of, session_defaults
from gateway.server import transport_of
from gateway.session import Session
from gateway.status import serves_demo_model
from gateway.turns import StartedTurn, TurnRequest

log = logging.getLogger("gateway.ws")

MSGPACK_SUBPROTOCOL = "gateway.msgpack"
JSON_SUBPROTOCOL = "gateway.json"


class ConnectionState(enum.Enum):
    """CONNECTING -> OPEN -> CLOSING -> CLOSED; CLOSING is skipped when the client simply leaves."""

    CONNECTING = "connecting"  # the handshake is not accepted yet
    OPEN = "open"
    CLOSING = "closing"  # a close reason is set; the reader is being stopped
    CLOSED = "closed"  # clean-up has begun and must run to its end


_TRANSITIONS = {
    ConnectionState.CONNECTING: {ConnectionState.OPEN, ConnectionState.CLOSED},
    ConnectionState.OPEN: {ConnectionState.CLOSING, ConnectionState.CLOSED},
    ConnectionState.CLOSING: {ConnectionState.CLOSED},
    ConnectionState.CLOSED: set(),
}


class TurnEvents:
    """The engine's sink for one turn; runs on the event loop thread. Events go to the session, not to
    a connection: a turn outlives a dropped socket, and a resuming one picks its frames up."""

    def __init__(self, hub: SessionHub, live: LiveSession, turn_id: str) -> None:
        self._hub = hub
        self._live = live
        self._turn_id = turn_id
        self.started: StartedTurn | None = None  # set once submit returned; events come after that

    def on_queued(self, position: int) -> None:
        self._hub.emit(self._live, p.QueuedFrame(id=self._turn_id, position=position))

    def on_token(self, text: str) -> None:
        self._hub.emit(self._live, p.TokenFrame(id=self._turn_id, text=text))

    def on_tool_call(self, call: ToolCall) -> None:
        self._hub.emit(self._live, p.ToolCallFrame(id=self._turn_id, call_id=call.id, name=call.name, arguments=call.arguments))

    def on_done(self, result: GenerationResult) -> None:
        assert self.started is not None
        self._hub.turn_done(self._live, self.started, result)


class Connection:
    """Reads frames, applies them to the session, starts turns through the turn service and streams
    their events back."""

    def __init__(
        self, websocket: WebSocket, settings: Settings, hub: SessionHub, metrics: Metrics, registry: dict[str, Connection]
    ) -> None:
        self.websocket = websocket
        self.settings = settings
        self.hub = hub
        self.turns = hub.turns
        self.metrics = metrics
        self.state = ConnectionState.CONNECTING
        self.owner = owner_of(settings.api_key)
        self.client = websocket.client.host if websocket.client else "unknown"  # whose quota its sessions count in
        self.live = hub.create(self.owner, self.client)
        self._fresh: LiveSession | None = self.live  # the session of `ready`, until the client resumes another
        self._registry = registry  # session id -> connection, for draining and inspection
        self.log = SessionLog(log, {"session": self.live.id})
        self._journal: Journal | None = self.live.journal  # what the writer streams; None once taken over
        self._direct: collections.deque[p.ServerFrame] = collections.deque()  # frames outside any journal
        self.json_mode = False  # answer in the encoding the client last used
        self._turned = False  # a turn was started: `resume` is no longer allowed
        self._frames = TokenBucket(rate=settings.frames_per_second, burst=2 * settings.frames_per_second)
        self._turns = TokenBucket(rate=settings.turns_per_minute / 60, burst=max(1.0, settings.turns_per_minute / 6))
        # Inflated bytes: a compressed frame costs its full size in decompression and decoding work.
        rate = float(settings.inbound_bytes_per_second)
        self._bytes = TokenBucket(rate=rate, burst=max(rate, float(settings.max_frame_bytes)))
        # Image bytes sent in `history` frames: 60 bytes of request must not buy megabytes of reply at will,
        # and the budget is the client address's, so reconnecting buys no fresh one.
        self._history_bytes = hub.history_budgets.get(self.client)
        self._strikes = 0  # frames refused by the rate limit in a row
        self._compiles = self.turns.grammars.quota(websocket.client.host if websocket.client else "unknown")
        self._closing: ConnectionClosing | None = None
        self._reader: asyncio.Task[Any] | None = None

    @property
    def session(self) -> Session:
        return self.live.session

    @property
    def active(self) -> StartedTurn | None:
        return self.live.active

    def put(self, frame: p.SessionFrame) -> None:
        """A frame of this connection's session: numbered, kept for replay, streamed when attached."""
        self.hub.emit(self.live, frame)

    def _move(self, state: ConnectionState) -> None:
        if state not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"connection state {self.state.value} cannot become {state.value}")
        self.state = state

    async def run(self, subprotocol: str | None) -> None:
        await self.websocket.accept(subprotocol=subprotocol)
        self._move(ConnectionState.OPEN)
        client = self.websocket.client
        self.log.info("opened from %s", f"{client.host}:{client.port}" if client else "?")
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()
        self._registry[self.live.id] = self
        self.hub.attach(self.live, self, self.client)
        self.put(self._ready_frame())
        self._reader = asyncio.current_task()
        writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{self.live.id}")
        try:
            await self._read_loop()
        except (WebSocketDisconnect, asyncio.CancelledError):
            pass  # the client left, or stop() cancelled us to close with its reason
        except ConnectionClosing as exc:
            self._closing = self._closing or exc
        except Exception:  # a bug in this connection's handling closes only this connection
            self.log.exception("handler failed")
            self._closing = self._closing or ConnectionClosing(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._move(ConnectionState.CLOSED)  # from here on stop() must not cancel us: clean-up has to complete
            await self._clean_up(writer)

    async def _clean_up(self, writer: asyncio.Task[None]) -> None:
        try:
            if self._registry.get(self.live.id) is self:
                del self._registry[self.live.id]
            # A vanished client's session and turn live on for the grace period; one that stopped
            # reading (4000) has its turn stopped: it would only fill the replay budget.
            slow = self._closing is not None and self._closing.code == CloseCode.SLOW_CONSUMER
            self.hub.detach(self.live, self, cancel_turn=slow)
            if self._closing is not None:  # before the writer goes: cancelling a send mid-frame breaks the socket
                await self._close(self._closing.code, self._closing.reason)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            self.metrics.connections.dec()
            reason = self._closing.reason if self._closing else "client left"
            self.log.info("closed (%s); %d exchanges in history", reason, len(self.session.exchanges))

    def taken_over(self) -> None:
        """Another connection resumed this session: stream nothing more of it, and close with 4003."""
        if self._journal is not None:
            self._journal.interrupt()
        self._journal = None
        self.stop(CloseCode.TAKEN_OVER, "the session was resumed by another connection")

    def stop(self, code: CloseCode, reason: str) -> None:
        """End the connection from outside (the writer, the server's drain): `closing`, then close.
        Only the first reason counts, and the reader is cancelled once."""
        if self.state is not ConnectionState.OPEN:
            return
        self._move(ConnectionState.CLOSING)
        self._closing = ConnectionClosing(code, reason)
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()

    async def _read_loop(self) -> None:
        while True:
            try:
                message = await asyncio.wait_for(self.websocket.receive(), self.settings.idle_timeout_s)
            except asyncio.TimeoutError:
                if self.active is not None:
                    continue
                raise ConnectionClosing(CloseCode.IDLE_TIMEOUT, "idle timeout") from None
            if message["type"] == "websocket.disconnect":
                return
            data: bytes | str | None = message.get("bytes")
            if data is None:
                data = message.get("text") or ""
            self.json_mode = isinstance(data, str)
            frame_id: str | None = None
            try:
                self._check_frame_rate()
                if isinstance(data, str):
                    p.check_json_size(data, self.settings.max_json_frame_bytes)
                frame = p.decode(data)
                frame_id = getattr(frame, "id", None)
                await self._handle(frame)
            except RetryLater as exc:
                self.send_error(exc.code, exc.message, exc.frame_id or frame_id, exc.retry_after_ms)
            except GatewayError as exc:
                self.send_error(exc.code, exc.message, exc.frame_id or frame_id)
            await self._pace(len(data))

    async def _pace(self, nbytes: int) -> None:
        """Past its byte rate, a connection is not read for a while: the bounded inbound queue then
        stops the server reading its socket, so decompression work is bounded too."""
        wait_s = self._bytes.spend(float(nbytes))
        if wait_s > 0:
            await asyncio.sleep(wait_s)

    def _check_frame_rate(self) -> None:
        wait_s = self._frames.take()
        if wait_s <= 0:
            self._strikes = 0
            return
        self._strikes += 1
        if self._strikes > 4 * self.settings.frames_per_second:  # warned, and still flooding
            raise ConnectionClosing(CloseCode.FLOODING, "too many frames")
        raise RetryLater(ErrorCode.RATE_LIMITED, "too many frames; slow down", int(wait_s * 1000) + 1)

    async def _write_loop(self) -> None:
        try:
            while True:
                while self._direct:
                    await self._send(self._direct.popleft())
                journal = self._journal
                if journal is None:
                    await _forever()
                frame = await journal.take() if journal is not None else None
                if frame is not None:
                    await self._send(frame)
        except ConnectionClosing as exc:
            self.stop(exc.code, exc.reason)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.stop(CloseCode.GOING_AWAY, "connection lost")
        except Exception:  # a frame that cannot be encoded is our bug: never leave a silent connection
            self.log.exception("writer failed")
            self.stop(CloseCode.INTERNAL_ERROR, "internal error")

    async def _send(self, frame: p.ServerFrame) -> None:
        payload = p.encode(frame, self.json_mode)
        send = self.websocket.send_text(payload) if isinstance(payload, str) else self.websocket.send_bytes(payload)
        try:
            await asyncio.wait_for(send, self.settings.send_timeout_s)
        except asyncio.TimeoutError:
            raise ConnectionClosing(CloseCode.SLOW_CONSUMER, "client is not reading") from None

    async def _handle(self, frame: p.ClientFrame) -> None:
        if isinstance(frame, p.TurnFrame):
            await self._start_turn(frame)
        elif isinstance(frame, p.CancelFrame):
            self._cancel(frame.id)
        elif isinstance(frame, p.ResetFrame):
            if self.active is not None:
                self.active.handle.cancel()
            self.session.reset()
            self.turns.images.hold(self.live.id, 0)
            await self.hub.save_history(self.live)
            self.put(p.ResetDoneFrame(id=frame.id))
        elif isinstance(frame, p.ConfigureFrame):
            await self._configure(frame)
        elif isinstance(frame, p.HistoryRequestFrame):
            self._history(frame)
        elif isinstance(frame, p.ResumeFrame):
            await self._resume(frame)
        elif isinstance(frame, p.ForgetFrame):
            await self._forget(frame)
        elif isinstance(frame, p.ToolResultFrame):
            self.turns.check_text(frame.content, "a tool result")
            self.session.add_tool_result(frame.call_id, frame.content)
            await self.hub.save_history(self.live)
        else:
            self.put(p.PongFrame(id=frame.id))

    def _history(self, frame: p.HistoryRequestFrame) -> None:
        """The history; with images only within the client address's budget. A client that does not read
        them meets the slow-consumer rule like any other (send_timeout_s, max_outbox_frames)."""
        if frame.include_images:
            wait_s = self._history_bytes.take_bytes(float(self.session.image_bytes))
            if wait_s > 0:
                message = "history with images is sent at a bounded rate (history_image_bytes_per_second); try again later"
                raise RetryLater(ErrorCode.RATE_LIMITED, message, int(wait_s * 1000) + 1, frame.id)
        self.put(history_frame(self.session, frame))

    async def _resume(self, frame: p.ResumeFrame) -> None:
        """Take up the session `frame` names; this connection's fresh one is discarded."""
        if self._turned:
            raise GatewayError(ErrorCode.INVALID_FIELD, "resume must come before the connection's first turn", frame.id)
        if frame.session == self.live.id:
            raise GatewayError(ErrorCode.INVALID_FIELD, "this connection already holds that session", frame.id)
        live = await self.hub.resume(frame.session, frame.token, self.owner, self.client)
        if self.state is not ConnectionState.OPEN:
            return
        fresh = self.live if self.live is self._fresh else None  # only its own unused session is discarded
        # No await from the switch to the rewind: neither writer may take a frame of `live` in between.
        self._switch_to(live)
        replayed, gap = live.journal.rewind(frame.last_seq)
        self._direct.append(
            p.ResumedFrame(session=live.id, last_seq=live.journal.last_seq, replayed=replayed, gap=gap, id=frame.id)
        )
        if fresh is not None:
            self._fresh = None
            await self.hub.discard(fresh)
        self.log.info("resumed (%d frames replayed%s)", replayed, ", with a gap" if gap else "")

    async def _forget(self, frame: p.ForgetFrame) -> None:
        old = self.live
        await self.hub.forget(old)  # a store that cannot delete it answers `store_unavailable`: nothing changed
        self._switch_to(self.hub.create(self.owner, self.client))
        self._fresh = self.live
        self.put(p.ForgottenFrame(session=self.live.id, resume_token=self.live.token, id=frame.id))

    def _switch_to(self, live: LiveSession) -> None:
        """Stream `live` from now on: the writer leaves the old journal and follows the new one."""
        if self._journal is not None:
            self._journal.interrupt()
        if self._registry.get(self.live.id) is self:
            del self._registry[self.live.id]
        self.hub.detach(self.live, self)
        self.live = live
        self.log = SessionLog(log, {"session": live.id})
        self._registry[live.id] = self
        self.hub.attach(live, self, self.client)
        self._journal = live.journal

    async def _start_turn(self, frame: p.TurnFrame) -> None:
        self.turns.check_open(frame.id)
        if self.active is not None:
            raise GatewayError(ErrorCode.BUSY, f"turn {self.active.turn.id!r} is still running; cancel it or wait")
        wait_s = self._turns.take()
        if wait_s > 0:
            raise RetryLater(ErrorCode.RATE_LIMITED, "too many turns; slow down", int(wait_s * 1000) + 1, frame.id)
        request = TurnRequest(
            id=frame.id, text=frame.text, images=frame.images, image_urls=frame.image_urls, options=frame.options
        )
        self._turned = True
        live = self.live
        events = TurnEvents(self.hub, live, frame.id)
        # The reader awaits this (no other frame of ours is read meanwhile), so the turn cannot race a reset.
        started = events.started = await self.turns.start(live.session, request, events, self._compiles)
        live.active = started  # before any await: the turn's events may already be queued
        self.put(p.AcceptedFrame(id=frame.id, prompt_tokens=started.plan.prompt_tokens, dropped_turns=started.plan.dropped_turns))
        await self.hub.turn_started(live, started)

    def _cancel(self, turn_id: str) -> None:
        if self.active is None or self.active.turn.id != turn_id:
            raise GatewayError(ErrorCode.NOT_FOUND, f"no running turn with id {turn_id!r}", turn_id)
        self.active.handle.cancel()

    async def _configure(self, frame: p.ConfigureFrame) -> None:
        options = p.SamplingOptions(**{k: getattr(frame, k) for k in p.SamplingOptions.__struct_fields__})
        self.turns.check_options(options)
        await self.turns.check_grammars(options, self._compiles)
        self.session.configure(frame.system, options)
        await self.hub.save_settings(self.live)
        self.put(p.ConfiguredFrame(defaults=session_defaults(self.turns, self.session), id=frame.id))

    def _ready_frame(self) -> p.ReadyFrame:
        engine = self.turns.engine
        return p.ReadyFrame(
            session=self.live.id,
            model=engine.model_id,
            protocol=p.PROTOCOL_VERSION,
            limits=limits_of(self.settings, engine),
            defaults=session_defaults(self.turns, self.session),
            vision=engine.vision,
            models=self.turns.models,
            demo=serves_demo_model(self.settings),
            resume_token=self.live.token,
            token_counter=engine.token_counter,
            durable=self.hub.guard.durable,
        )

    def _abort_transport(self) -> None:
        """A client that stopped reading never drains the bytes it is owed, and a graceful close waits
        for exactly that: drop the socket and its buffers instead (no close frame: it would not read one)."""
        transport = transport_of(self.websocket)
        if transport is not None:
            transport.abort()
        else:
            self.log.warning("cannot reach the transport to abort a slow consumer; it closes when TCP gives up")

    def send_error(self, code: ErrorCode, message: str, frame_id: str | None, retry_after_ms: int | None = None) -> None:
        self.metrics.errors.labels(code.value).inc()
        self.put(p.ErrorFrame(code=code.value, message=message, id=frame_id, retry_after_ms=retry_after_ms))

    async def _close(self, code: CloseCode, reason: str) -> None:
        """Best effort: a `closing` frame, then the close handshake, each within a short deadline."""
        if code == CloseCode.SLOW_CONSUMER:
            self._abort_transport()
            return
        try:
            payload = p.encode(p.ClosingFrame(code=int(code), reason=reason), self.json_mode)
            send = self.websocket.send_text(payload) if isinstance(payload, str) else self.websocket.send_bytes(payload)
            await asyncio.wait_for(send, 1.0)
            await asyncio.wait_for(self.websocket.close(code=int(code), reason=reason), 1.0)
        except Exception:  # the socket may already be gone; closing is best effort
            pass


class SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Every line a connection logs starts with its session id (the one `ready` told the client)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"session {self.extra['session'] if self.extra else '?'}: {msg}", kwargs


async def _forever() -> None:
    """The writer of a taken-over connection waits here until its connection closes."""
    await asyncio.Event().wait()


def owner_of(api_key: str | None) -> str:
    """Whose sessions these are: a hash of the key that opened the connection, never the key."""
    return hashlib.sha256(api_key.encode()).hexdigest() if api_key else ""
