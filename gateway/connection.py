"""One WebSocket connection: a reader task and a writer task around a session and the engine."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway import protocol as p
from gateway.config import Settings
from gateway.engine.types import Engine, EngineFull, GenerationRequest, GenerationResult, TurnHandle
from gateway.errors import CloseCode, ErrorCode, GatewayError
from gateway.fetch import image_url_bytes
from gateway.images import DecodedImage, ImageLimits, decode_image
from gateway.metrics import Metrics
from gateway.outbox import ConnectionClosing, Outbox
from gateway.ratelimit import TokenBucket
from gateway.replies import done_frame, limits_of, server_defaults
from gateway.server import transport_of
from gateway.session import Session, UserTurn, resolve_params
from gateway.url_guard import FetchPolicy

log = logging.getLogger("gateway.ws")

MSGPACK_SUBPROTOCOL = "gateway.msgpack"
JSON_SUBPROTOCOL = "gateway.json"


@dataclass
class ActiveTurn:
    turn: UserTurn
    handle: TurnHandle
    epoch: int


class TurnEvents:
    """The engine's sink for one turn; runs on the event loop thread."""

    def __init__(self, connection: Connection, active: ActiveTurn) -> None:
        self._connection = connection
        self._active = active

    def on_queued(self, position: int) -> None:
        self._connection.outbox.put(p.QueuedFrame(id=self._active.turn.id, position=position))

    def on_start(self) -> None:
        pass

    def on_token(self, text: str) -> None:
        self._connection.outbox.put(p.TokenFrame(id=self._active.turn.id, text=text))

    def on_done(self, result: GenerationResult) -> None:
        self._connection.finish_turn(self._active, result)


class Connection:
    """Reads frames, applies them to the session, starts turns and streams their events back."""

    def __init__(self, websocket: WebSocket, settings: Settings, engine: Engine, metrics: Metrics) -> None:
        self.websocket = websocket
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.session = Session(max_history_turns=settings.max_history_turns)
        self.log = SessionLog(log, {"session": self.session.id})
        self.outbox = Outbox(settings.max_outbox_frames)
        self.json_mode = False  # answer in the encoding the client last used
        self.active: ActiveTurn | None = None
        self.draining = False
        self._server_defaults = server_defaults(settings)
        self._image_limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        self._fetch_policy = FetchPolicy.from_settings(settings)
        self._frames = TokenBucket(rate=settings.frames_per_second, burst=2 * settings.frames_per_second)
        self._turns = TokenBucket(rate=settings.turns_per_minute / 60, burst=max(1.0, settings.turns_per_minute / 6))
        self._strikes = 0  # frames refused by the rate limit in a row
        self._closing: ConnectionClosing | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._finishing = False

    async def run(self, subprotocol: str | None) -> None:
        await self.websocket.accept(subprotocol=subprotocol)
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
            self._finishing = True  # from here on stop() must not cancel us: cleanup has to complete
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
            self.metrics.connections.dec()
            reason = self._closing.reason if self._closing else "client left"
            self.log.info("closed (%s); %d exchanges in history", reason, len(self.session.exchanges))

    def stop(self, code: CloseCode, reason: str) -> None:
        """End the connection from outside (the writer, the server's drain): `closing`, then close.
        Only the first reason counts, and the reader is cancelled once."""
        if self._closing is not None or self._finishing:
            return
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
            except RateLimited as exc:
                self.send_error(exc.code, exc.message, exc.frame_id or frame_id, exc.retry_after_ms)
            except GatewayError as exc:
                self.send_error(exc.code, exc.message, exc.frame_id or frame_id)

    def _check_frame_rate(self) -> None:
        wait_s = self._frames.take()
        if wait_s <= 0:
            self._strikes = 0
            return
        self._strikes += 1
        if self._strikes > 4 * self.settings.frames_per_second:  # warned, and still flooding
            raise ConnectionClosing(CloseCode.FLOODING, "too many frames")
        raise RateLimited("too many frames; slow down", int(wait_s * 1000) + 1)

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
        if self.draining:
            raise GatewayError(ErrorCode.SHUTTING_DOWN, "the server is shutting down; reconnect shortly", frame.id)
        if self.active is not None:
            raise GatewayError(ErrorCode.BUSY, f"turn {self.active.turn.id!r} is still running; cancel it or wait")
        wait_s = self._turns.take()
        if wait_s > 0:
            raise RateLimited("too many turns; slow down", int(wait_s * 1000) + 1, frame.id)
        self._check_turn_limits(frame)
        blobs = list(frame.images) + await self._fetch_urls(frame.image_urls)
        images = await asyncio.to_thread(self._decode_images, blobs)
        turn = UserTurn(id=frame.id, text=frame.text, images=images)
        params = resolve_params(self._server_defaults, self.session.defaults, frame.options, self.settings.max_tokens_limit)
        plan = self.session.plan(turn, params.max_tokens, self.engine.context_tokens, self.engine.count_prompt_tokens)
        active = ActiveTurn(turn=turn, handle=TurnHandle(), epoch=self.session.epoch)
        request = GenerationRequest(messages=plan.messages, params=params, handle=active.handle)
        try:
            self.engine.submit(request, TurnEvents(self, active))
        except EngineFull:
            raise RateLimited("the server is at capacity; try again shortly", 1000, frame.id, ErrorCode.OVERLOADED) from None
        self.session.drop_oldest(plan.dropped_turns)
        self.active = active
        self.outbox.put(p.AcceptedFrame(id=frame.id, prompt_tokens=plan.prompt_tokens, dropped_turns=plan.dropped_turns))

    def _check_turn_limits(self, frame: p.TurnFrame) -> None:
        s = self.settings
        if len(frame.text) > s.max_text_chars:
            raise GatewayError(ErrorCode.TOO_LARGE, f"text is {len(frame.text)} characters; the limit is {s.max_text_chars}")
        count = len(frame.images) + len(frame.image_urls)
        if count and not self.engine.vision:
            raise GatewayError(ErrorCode.IMAGES_UNSUPPORTED, "the served model is text-only; send turns without images")
        if count > s.max_images_per_turn:
            raise GatewayError(ErrorCode.TOO_LARGE, f"{count} images; the limit is {s.max_images_per_turn} per turn")
        if frame.options is not None:
            self._check_options(frame.options)

    def _check_options(self, options: p.SamplingOptions) -> None:
        """The limits on sampling options that the schema alone cannot know (they are settings)."""
        limit = self.settings.max_tokens_limit
        if options.max_tokens is not None and options.max_tokens > limit:
            raise GatewayError(ErrorCode.INVALID_FIELD, f"max_tokens {options.max_tokens} is above the limit of {limit}")
        if options.stop is not None and len(options.stop) > self.settings.max_stop_strings:
            raise GatewayError(ErrorCode.TOO_LARGE, f"at most {self.settings.max_stop_strings} stop strings")

    async def _fetch_urls(self, urls: list[str]) -> list[bytes]:
        if not urls:
            return []
        fetched = await asyncio.gather(
            *(asyncio.to_thread(image_url_bytes, url, self._fetch_policy) for url in urls), return_exceptions=True
        )
        for result in fetched:
            if isinstance(result, BaseException):
                raise result
        return list(fetched)  # type: ignore[arg-type]

    def _decode_images(self, blobs: list[bytes]) -> tuple[DecodedImage, ...]:
        return tuple(decode_image(blob, self._image_limits, i) for i, blob in enumerate(blobs))

    def finish_turn(self, active: ActiveTurn, result: GenerationResult) -> None:
        """The engine's `done`: record the exchange (partial when cancelled) and tell the client."""
        self.metrics.observe_turn(result)
        if result.finish_reason == "error":
            self.send_error(ErrorCode.GENERATION, result.error or "generation failed", active.turn.id)
        else:
            self.session.record(active.turn, result.text, result.finish_reason == "cancelled", active.epoch)
        self.outbox.put(done_frame(active.turn.id, result))
        if self.active is active:
            self.active = None

    def _cancel(self, turn_id: str) -> None:
        if self.active is None or self.active.turn.id != turn_id:
            raise GatewayError(ErrorCode.NOT_FOUND, f"no running turn with id {turn_id!r}", turn_id)
        self.active.handle.cancel()

    def _configure(self, frame: p.ConfigureFrame) -> None:
        options = p.SamplingOptions(**{k: getattr(frame, k) for k in p.SamplingOptions.__struct_fields__})
        self._check_options(options)
        self.session.configure(frame.system, options)
        self.outbox.put(p.ConfiguredFrame(defaults=self._defaults(), id=frame.id))

    def _defaults(self) -> dict[str, Any]:
        merged = {k: getattr(self._server_defaults, k) for k in p.SamplingOptions.__struct_fields__}
        merged.update({k: v for k in merged if (v := getattr(self.session.defaults, k)) is not None})
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
        return p.ReadyFrame(
            session=self.session.id,
            model=self.engine.model_id,
            protocol=p.PROTOCOL_VERSION,
            limits=limits_of(self.settings, self.engine),
            defaults=self._defaults(),
            vision=self.engine.vision,
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


class RateLimited(GatewayError):
    def __init__(
        self, message: str, retry_after_ms: int, frame_id: str | None = None, code: ErrorCode = ErrorCode.RATE_LIMITED
    ) -> None:
        super().__init__(code, message, frame_id)
        self.retry_after_ms = retry_after_ms
