"""One WebSocket connection: a reader task and a writer task around a session and the turn service."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.config import Settings
from gateway.core.ratelimit import TokenBucket
from gateway.errors import CloseCode, ConnectionClosing, ErrorCode, GatewayError, RetryLater
from gateway.metrics import Metrics
from gateway.ws import protocol as p
from gateway.ws.handlers import FrameHandlers, SessionLog
from gateway.ws.hub import SessionHub
from gateway.ws.journal import Journal
from gateway.ws.letting_go import let_go
from gateway.ws.live_session import LiveSession
from gateway.ws.replies import limits_of, session_defaults
from gateway.ws.states import CONNECTION_MOVES, ConnectionState, moved
from gateway.ws.token_scope import TokenScope
from gateway.ws.transport import transport_of

log = logging.getLogger("gateway.ws.endpoint")

MSGPACK_SUBPROTOCOL = "gateway.msgpack"
JSON_SUBPROTOCOL = "gateway.json"


class Connection(FrameHandlers):
    """Reads frames, applies them to the session, starts turns through the turn service and streams
    their events back."""

    def __init__(
        self, websocket: WebSocket, settings: Settings, hub: SessionHub, metrics: Metrics, registry: dict[str, Connection]
    ) -> None:
        client = websocket.client.host if websocket.client else "unknown"
        super().__init__(settings, hub, client, owner_of(settings.api_key), websocket.headers.get("traceparent"))
        self.websocket = websocket
        self.metrics = metrics
        self._registry = registry  # session id -> connection, for draining and inspection
        self._journal: Journal | None = self.live.journal  # what the writer streams; None once taken over
        self.json_mode = False  # answer in the encoding the client last used
        self._frames = TokenBucket(rate=settings.frames_per_second, burst=2 * settings.frames_per_second)
        # Inflated bytes: a compressed frame costs its full size in decompression and decoding work.
        rate = float(settings.inbound_bytes_per_second)
        self._bytes = TokenBucket(rate=rate, burst=max(rate, float(settings.max_frame_bytes)))
        self._strikes = 0  # frames refused by the rate limit in a row
        self._closing: ConnectionClosing | None = None
        self._reader: asyncio.Task[Any] | None = None

    def _move(self, state: ConnectionState) -> None:
        self.state = moved(self.state, state, CONNECTION_MOVES, "connection")

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
        timer = asyncio.create_task(self._run_out(self.scope)) if self.scope is not None else None
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
            if timer is not None:
                timer.cancel()
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

    async def _run_out(self, scope: TokenScope) -> None:
        """A token's connection lasts its `session_s`: then a `closing` notice with the grace (no new turn
        starts, a running one may finish), and after the grace the close with 4004."""
        await asyncio.sleep(scope.claims.session_s)
        scope.expired = True
        grace_s, reason = self.settings.token_closing_grace_s, "the token's session time is over"
        try:
            await self._send(p.ClosingFrame(code=int(CloseCode.TOKEN_EXPIRED), reason=reason, grace_ms=int(grace_s * 1000)))
        except Exception:  # the socket went meanwhile: the reader sees it and cleans up
            return
        await asyncio.sleep(grace_s)
        self.stop(CloseCode.TOKEN_EXPIRED, reason)

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
            frames: list[p.ClientFrame] = []  # the one reference to the frame, for let_go to take
            try:
                self._check_frame_rate()
                if isinstance(data, str):
                    p.check_json_size(data, self.settings.max_json_frame_bytes)
                frames.append(await decoded(data))
                frame_id = getattr(frames[0], "id", None)
                await self.handle(frames[0])
            except GatewayError as exc:
                retry_after_ms = exc.retry_after_ms if isinstance(exc, RetryLater) else None
                self.send_error(
                    exc.code, exc.message, exc.frame_id if isinstance(exc, p.FrameError) else frame_id, retry_after_ms
                )
            await let_go(frames, len(data))
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
                while self.direct:
                    await self._send(self.direct.popleft())
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

    def switch_to(self, live: LiveSession) -> None:
        """Stream `live` from now on: the writer leaves the old journal and follows the new one."""
        if self._journal is not None:
            self._journal.interrupt()
        old = self.live
        if self._registry.get(old.id) is self:
            del self._registry[old.id]
        self.live = live
        self.log = SessionLog(log, {"session": live.id})
        self._registry[live.id] = self
        # Attached first: leaving the old one may put its client over quota, and the detached session that
        # unloads must never be the one this connection moves to.
        self.hub.attach(live, self, self.client)
        self.hub.detach(old, self)
        self._journal = live.journal

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
            demo=self.settings.serves_demo_model,
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
        self.log.info("sent error %s", code.value, extra={"code": code.value})
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


async def _forever() -> None:
    """The writer of a taken-over connection waits here until its connection closes."""
    await asyncio.Event().wait()


def owner_of(api_key: str | None) -> str:
    """Whose sessions these are: a hash of the key that opened the connection, never the key."""
    return hashlib.sha256(api_key.encode()).hexdigest() if api_key else ""


async def decoded(data: bytes | str) -> p.ClientFrame:
    """The message's frame, decoded a slice at a time with the loop's other work in between, so a frame of
    megabytes of small values holds up no other client for long."""
    steps = p.decode_steps(data)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            frame: p.ClientFrame = done.value
            return frame
        await asyncio.sleep(0)
