"""WebSocket compression that leaves big messages alone: deflating a `history` with megabytes of images
takes the event loop about 40 ms a MiB (every client waits), and PNG, JPEG and WebP bytes barely shrink;
inflating a client's compressed message takes it about 5 ms a MiB, so those have a bound of their own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import PayloadTooBig
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import CONT, CTRL_OPCODES, Frame
from websockets.typing import ExtensionParameter

UNCOMPRESSED_FROM_BYTES = 256 * 1024  # messages this large go out as they are


class SkipLargeMessages(PerMessageDeflate):
    """permessage-deflate whose sender leaves single-frame messages of `UNCOMPRESSED_FROM_BYTES` or more
    uncompressed. RFC 7692 lets each message choose (RSV1 unset); the peer's inflater never sees them,
    so the two sliding windows stay in step. A compressed message the peer sends inflates, in one
    event-loop callback per frame, to at most `max_inflated` bytes (None: only the message bound): past
    it the library closes the connection with 1009, as for any message over its size."""

    max_inflated: int | None = None
    _inflated = 0  # bytes the current compressed message has inflated to so far

    def encode(self, frame: Frame) -> Frame:
        whole = frame.opcode not in CTRL_OPCODES and frame.opcode is not CONT and frame.fin
        if whole and len(frame.data) >= UNCOMPRESSED_FROM_BYTES:
            return frame
        return super().encode(frame)

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        if frame.opcode in CTRL_OPCODES or self.max_inflated is None:
            return super().decode(frame, max_size=max_size)
        if frame.opcode is not CONT:
            self._inflated = 0  # a new message
        compressed = self.decode_cont_data if frame.opcode is CONT else frame.rsv1
        if not compressed:
            return super().decode(frame, max_size=max_size)
        room = self.max_inflated - self._inflated
        if max_size is not None and max_size < room:
            return super().decode(frame, max_size=max_size)
        try:
            decoded = super().decode(frame, max_size=room)
        except PayloadTooBig:
            raise PayloadTooBig(None, self.max_inflated) from None  # names this bound, not the message's
        self._inflated += len(decoded.data)
        return decoded


class SkipLargeMessagesFactory(ServerPerMessageDeflateFactory):
    """Negotiates exactly as websockets does, then sends through `SkipLargeMessages`."""

    max_inflated: int | None = None

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, made = super().process_request_params(params, accepted_extensions)
        extension = SkipLargeMessages(
            made.remote_no_context_takeover,
            made.local_no_context_takeover,
            made.remote_max_window_bits,
            made.local_max_window_bits,
            made.compress_settings,
        )
        extension.max_inflated = self.max_inflated
        return response, extension


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with uvicorn's own deflate settings, big messages excepted."""

    max_inflated: int | None = None  # see SkipLargeMessages

    @classmethod
    def bound_to(cls, max_inflated: int) -> type[GatewayWebSocketProtocol]:
        """The protocol whose clients' compressed messages inflate to at most `max_inflated` bytes."""
        return type(cls.__name__, (cls,), {"max_inflated": max_inflated})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.ws_per_message_deflate:
            factory = SkipLargeMessagesFactory(
                server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5}
            )
            factory.max_inflated = self.max_inflated
            self.conn.available_extensions = [factory]
