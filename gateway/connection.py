"""One WebSocket connection: a reader task and a writer task around a session and the turn service."""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway import protocol as p
from gateway.config import Settings
from gateway.engine.types import GenerationResult
from gateway.errors import CloseCode, ErrorCode, GatewayError, RetryLater
from gateway.metrics import Metrics
from gateway.outbox import ConnectionClosing, Outbox
from gateway.ratelimit import TokenBucket
from gateway.replies import done_frame, limits_of
from gateway.server import transport_of
from gateway.session import Session
from gateway.turns import StartedTurn, TurnRequest, TurnService

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
    """The engine's sink for one turn; runs on the event loop thread."""

    def __init__(self, connection: Connection, turn_id: str) -> None:
        self._connection = connection
        self._turn_id = turn_id
        self.started: StartedTurn | None = None  # set once submit returned; events come after that

    def on_queued(self, position: int) -> None:
        self._connection.outbox.put(p.QueuedFrame(id=self._turn_id, position=position))

    def on_token(self, text: str) -> None:
        self._connection.outbox.put(p.TokenFrame(id=self._turn_id, text=text))

    def on_done(self, result: GenerationResult) -> None:
        assert self.started is not None
        self._connection.finish_turn(self.started, result)


class Connection:
    """Reads frames, applies them to the session, starts turns through the turn service and streams
    their events back."""

    def __init__(self, websocket: WebSocket, settings: Settings, turns: TurnService, metrics: Metrics) -> None:
        self.websocket = websocket
        self.settings = settings
        self.turns = turns
        self.metrics = metrics
        self.state = ConnectionState.CONNECTING
        self.session = Session(max_history_turns=settings.max_history_turns)
        self.log = SessionLog(log, {"session": self.session.id})
        self.outbox = Outbox(settings.max_outbox_frames)
        self.json_mode = False  # answer in the encoding the client last used
        self.active: StartedTurn | None = None
        self._frames = TokenBucket(rate=settings.frames_per_second, burst=2 * settings.frames_per_second)
        self._turns = TokenBucket(rate=settings.turns_per_minute / 60, burst=max(1.0, settings.turns_per_minute / 6))
        # Inflated bytes: a compressed frame costs its full size in decompression and decoding work.
        rate = float(settings.inbound_bytes_per_second)
        self._bytes = TokenBucket(rate=rate, burst=max(rate, float(settings.max_frame_bytes)))
        self._strikes = 0  # frames refused by the rate limit in a row
        self._closing: ConnectionClosing | None = None
        self._reader: asyncio.Task[Any] | None = None

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
        self.outbox.put(self._ready_frame())
        self._reader = asyncio.current_task()
        writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{self.session.id}")
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
            if self.active is not None:
                self.active.handle.cancel()  # a vanished client's turn stops at the next token
            if self._closing is not None:  # before the writer goes: cancelling a send mid-frame breaks the socket
                await self._close(self._closing.code, self._closing.reason)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            self.turns.forget(self.session)
            self.metrics.connections.dec()
            reason = self._closing.reason if self._closing else "client left"
            self.log.info("closed (%s); %d exchanges in history", reason, len(self.session.exchanges))

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
                frame = await self.outbox.get()
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
            self.outbox.put(p.ResetDoneFrame(id=frame.id))
        elif isinstance(frame, p.ConfigureFrame):
            self._configure(frame)
        elif isinstance(frame, p.HistoryRequestFrame):
            self.outbox.put(self._history_frame(frame))
        else:
            self.outbox.put(p.PongFrame(id=frame.id))

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
        events = TurnEvents(self, frame.id)
        # The reader awaits this (no other frame of ours is read meanwhile), so the turn cannot race a reset.
        self.active = events.started = await self.turns.start(self.session, request, events)
        plan = self.active.plan
        self.outbox.put(p.AcceptedFrame(id=frame.id, prompt_tokens=plan.prompt_tokens, dropped_turns=plan.dropped_turns))

    def finish_turn(self, started: StartedTurn, result: GenerationResult) -> None:
        """The engine's `done`: record the exchange (partial when cancelled) and tell the client."""
        self.turns.record(self.session, started, result)
        if result.finish_reason == "error":
            self.send_error(ErrorCode.GENERATION, result.error or "generation failed", started.turn.id)
        self.outbox.put(done_frame(started.turn.id, result))
        if self.active is started:
            self.active = None

    def _cancel(self, turn_id: str) -> None:
        if self.active is None or self.active.turn.id != turn_id:
            raise GatewayError(ErrorCode.NOT_FOUND, f"no running turn with id {turn_id!r}", turn_id)
        self.active.handle.cancel()

    def _configure(self, frame: p.ConfigureFrame) -> None:
        options = p.SamplingOptions(**{k: getattr(frame, k) for k in p.SamplingOptions.__struct_fields__})
        self.turns.check_options(options)
        self.session.configure(frame.system, options)
        self.outbox.put(p.ConfiguredFrame(defaults=self._defaults(), id=frame.id))

    def _defaults(self) -> dict[str, Any]:
        server = self.turns.server_defaults
        merged = {k: getattr(server, k) for k in p.SamplingOptions.__struct_fields__}
        merged.update({k: v for k in merged if (v := getattr(self.session.defaults, k)) is not None})
        merged["model"] = merged["model"] or self.turns.engine.model_id
        merged["system"] = self.session.system
        return merged

    def _history_frame(self, frame: p.HistoryRequestFrame) -> p.HistoryFrame:
        entries: list[p.HistoryEntry] = []
        for exchange in self.session.exchanges:
            images = [
                p.ImageInfo(
                    format=i.format,
                    width=i.width,
                    height=i.height,
                    bytes=len(i.data),
                    sha256=i.sha256,
                    data=i.data if frame.include_images else None,
                )
                for i in exchange.turn.images
            ]
            entries.append(p.HistoryEntry(role="user", text=exchange.turn.text, id=exchange.turn.id, images=images))
            entries.append(p.HistoryEntry(role="assistant", text=exchange.reply, id=exchange.turn.id, partial=exchange.partial))
        return p.HistoryFrame(system=self.session.system, turns=entries, id=frame.id)

    def _ready_frame(self) -> p.ReadyFrame:
        engine = self.turns.engine
        return p.ReadyFrame(
            session=self.session.id,
            model=engine.model_id,
            protocol=p.PROTOCOL_VERSION,
            limits=limits_of(self.settings, engine),
            defaults=self._defaults(),
            vision=engine.vision,
            models=self.turns.models,
            demo=self.settings.model is None and self.settings.engine == "real",
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
        self.outbox.put(p.ErrorFrame(code=code.value, message=message, id=frame_id, retry_after_ms=retry_after_ms))

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
