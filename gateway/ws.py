"""One WebSocket connection: a reader task and a writer task around a session and the engine."""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway import protocol as p
from gateway.config import Settings
from gateway.engine.types import Engine, EngineFull, GenerationRequest, GenerationResult, TurnHandle
from gateway.errors import CloseCode, ErrorCode, GatewayError
from gateway.images import DecodedImage, ImageLimits, decode_image
from gateway.session import Session, UserTurn, resolve_params

log = logging.getLogger("gateway.ws")

MSGPACK_SUBPROTOCOL = "gateway.msgpack"
JSON_SUBPROTOCOL = "gateway.json"


def server_defaults(settings: Settings) -> p.SamplingOptions:
    return p.SamplingOptions(
        temperature=settings.default_temperature,
        top_p=settings.default_top_p,
        top_k=settings.default_top_k,
        max_tokens=settings.default_max_tokens,
        repetition_penalty=settings.default_repetition_penalty,
        ignore_eos=False,
    )


def limits_of(settings: Settings, engine: Engine) -> dict[str, int]:
    """The limits a client must respect, as announced in `ready`."""
    return {
        "max_frame_bytes": settings.max_frame_bytes,
        "max_image_bytes": settings.max_image_bytes,
        "max_image_pixels": settings.max_image_pixels,
        "max_images_per_turn": settings.max_images_per_turn if engine.vision else 0,
        "max_text_chars": settings.max_text_chars,
        "max_history_turns": settings.max_history_turns,
        "max_stop_strings": settings.max_stop_strings,
        "max_tokens": settings.max_tokens_limit,
        "context_tokens": engine.context_tokens,
    }


class Outbox:
    """Frames waiting for the writer. Token deltas for the same turn merge while they wait, so a slow
    reader gets fewer, larger frames and the buffer stays bounded by the turn's text."""

    def __init__(self) -> None:
        self._frames: collections.deque[p.ServerFrame] = collections.deque()
        self._ready = asyncio.Event()

    def put(self, frame: p.ServerFrame) -> None:
        last = self._frames[-1] if self._frames else None
        if isinstance(frame, p.TokenFrame) and isinstance(last, p.TokenFrame) and last.id == frame.id:
            self._frames[-1] = p.TokenFrame(id=frame.id, text=last.text + frame.text)
        else:
            self._frames.append(frame)
        self._ready.set()

    async def get(self) -> p.ServerFrame:
        while not self._frames:
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()


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

    def __init__(self, websocket: WebSocket, settings: Settings, engine: Engine) -> None:
        self.websocket = websocket
        self.settings = settings
        self.engine = engine
        self.session = Session(max_history_turns=settings.max_history_turns)
        self.outbox = Outbox()
        self.json_mode = False  # answer in the encoding the client last used
        self.active: ActiveTurn | None = None
        self._server_defaults = server_defaults(settings)
        self._image_limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)

    async def run(self) -> None:
        registry: dict[str, Connection] = self.websocket.app.state.connections
        registry[self.session.id] = self
        try:
            await self._run()
        finally:
            registry.pop(self.session.id, None)

    async def _run(self) -> None:
        subprotocol = self._negotiate_encoding()
        await self.websocket.accept(subprotocol=subprotocol)
        self.outbox.put(self._ready_frame())
        writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{self.session.id}")
        try:
            await self._read_loop()
        except WebSocketDisconnect:
            pass
        except Exception:  # a bug in this connection's handling closes only this connection
            log.exception("session %s: handler failed", self.session.id)
            await self._close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            if self.active is not None:
                self.active.handle.cancel()  # a vanished client's turn stops at the next token
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    def _negotiate_encoding(self) -> str | None:
        """Pick the encoding of frames sent before the client speaks: a `gateway.msgpack` or
        `gateway.json` subprotocol, else `?encoding=`, else JSON, so a bare websocat reads text."""
        offered = list(self.websocket.scope.get("subprotocols", []))
        for name in offered:
            if name in (MSGPACK_SUBPROTOCOL, JSON_SUBPROTOCOL):
                self.json_mode = name == JSON_SUBPROTOCOL
                return str(name)
        self.json_mode = self.websocket.query_params.get("encoding", "json") != "msgpack"
        return None

    async def _read_loop(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data: bytes | str | None = message.get("bytes")
            if data is None:
                data = message.get("text") or ""
            self.json_mode = isinstance(data, str)
            frame_id: str | None = None
            try:
                frame = p.decode(data)
                frame_id = getattr(frame, "id", None)
                await self._handle(frame)
            except GatewayError as exc:
                self.send_error(exc.code, exc.message, exc.frame_id or frame_id)

    async def _write_loop(self) -> None:
        while True:
            frame = await self.outbox.get()
            payload = p.encode(frame, self.json_mode)
            if isinstance(payload, str):
                await self.websocket.send_text(payload)
            else:
                await self.websocket.send_bytes(payload)

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
        if self.active is not None:
            raise GatewayError(ErrorCode.BUSY, f"turn {self.active.turn.id!r} is still running; cancel it or wait")
        self._check_turn_limits(frame)
        images = await asyncio.to_thread(self._decode_images, frame.images)
        turn = UserTurn(id=frame.id, text=frame.text, images=images)
        params = resolve_params(self._server_defaults, self.session.defaults, frame.options, self.settings.max_tokens_limit)
        plan = self.session.plan(turn, params.max_tokens, self.engine.context_tokens, self.engine.count_prompt_tokens)
        active = ActiveTurn(turn=turn, handle=TurnHandle(), epoch=self.session.epoch)
        request = GenerationRequest(messages=plan.messages, params=params, handle=active.handle)
        try:
            self.engine.submit(request, TurnEvents(self, active))
        except EngineFull:
            raise GatewayError(ErrorCode.OVERLOADED, "the server is at capacity; try again shortly") from None
        self.session.drop_oldest(plan.dropped_turns)
        self.active = active
        self.outbox.put(p.AcceptedFrame(id=frame.id, prompt_tokens=plan.prompt_tokens, dropped_turns=plan.dropped_turns))

    def _check_turn_limits(self, frame: p.TurnFrame) -> None:
        if len(frame.text) > self.settings.max_text_chars:
            raise GatewayError(
                ErrorCode.TOO_LARGE, f"text is {len(frame.text)} characters; the limit is {self.settings.max_text_chars}"
            )
        if frame.images and not self.engine.vision:
            raise GatewayError(ErrorCode.IMAGES_UNSUPPORTED, "the served model is text-only; send turns without images")
        if len(frame.images) > self.settings.max_images_per_turn:
            raise GatewayError(
                ErrorCode.TOO_LARGE, f"{len(frame.images)} images; the limit is {self.settings.max_images_per_turn} per turn"
            )
        stops = frame.options.stop if frame.options and frame.options.stop else []
        if len(stops) > self.settings.max_stop_strings:
            raise GatewayError(ErrorCode.TOO_LARGE, f"at most {self.settings.max_stop_strings} stop strings")

    def _decode_images(self, blobs: list[bytes]) -> tuple[DecodedImage, ...]:
        return tuple(decode_image(blob, self._image_limits, i) for i, blob in enumerate(blobs))

    def finish_turn(self, active: ActiveTurn, result: GenerationResult) -> None:
        """The engine's `done`: record the exchange (partial when cancelled) and tell the client."""
        if result.finish_reason == "error":
            self.send_error(ErrorCode.GENERATION, result.error or "generation failed", active.turn.id)
        else:
            partial = result.finish_reason == "cancelled"
            self.session.record(active.turn, result.text, partial, active.epoch)
        self.outbox.put(
            p.DoneFrame(
                id=active.turn.id,
                finish_reason=result.finish_reason,
                text=result.text,
                usage=p.Usage(
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens,
                    total_tokens=result.prompt_tokens + result.completion_tokens,
                ),
                timing=p.Timing(
                    ttft_ms=None if result.ttft_ms is None else round(result.ttft_ms, 2),
                    total_ms=round(result.total_ms, 2),
                    tokens_per_s=round(result.tokens_per_s, 2),
                ),
            )
        )
        if self.active is active:
            self.active = None

    def _cancel(self, turn_id: str) -> None:
        if self.active is None or self.active.turn.id != turn_id:
            raise GatewayError(ErrorCode.NOT_FOUND, f"no running turn with id {turn_id!r}", turn_id)
        self.active.handle.cancel()

    def _configure(self, frame: p.ConfigureFrame) -> None:
        options = p.SamplingOptions(**{k: getattr(frame, k) for k in p.SamplingOptions.__struct_fields__})
        if options.max_tokens is not None and options.max_tokens > self.settings.max_tokens_limit:
            raise GatewayError(
                ErrorCode.INVALID_FIELD, f"max_tokens {options.max_tokens} is above the limit of {self.settings.max_tokens_limit}"
            )
        if options.stop is not None and len(options.stop) > self.settings.max_stop_strings:
            raise GatewayError(ErrorCode.TOO_LARGE, f"at most {self.settings.max_stop_strings} stop strings")
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

    def send_error(self, code: ErrorCode, message: str, frame_id: str | None) -> None:
        self.outbox.put(p.ErrorFrame(code=code.value, message=message, id=frame_id))

    async def _close(self, code: CloseCode, reason: str) -> None:
        try:
            await self.websocket.close(code=int(code), reason=reason)
        except Exception:  # the socket may already be gone; closing is best effort
            pass


async def websocket_endpoint(websocket: WebSocket) -> None:
    state = websocket.app.state
    engine: Engine | None = state.engine
    if engine is None:
        await websocket.accept()
        await websocket.close(code=int(CloseCode.TRY_AGAIN_LATER), reason="model is loading")
        return
    await Connection(websocket, state.settings, engine).run()
