"""WebSocket compression that leaves big messages alone: deflating a `history` with megabytes of images
takes the event loop about 40 ms a MiB (every client waits), and PNG, JPEG and WebP bytes barely shrink."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import CONT, CTRL_OPCODES, Frame
from websockets.typing import ExtensionParameter

UNCOMPRESSED_FROM_BYTES = 256 * 1024  # messages this large go out as they are


class SkipLargeMessages(PerMessageDeflate):
    """permessage-deflate whose sender leaves single-frame messages of `UNCOMPRESSED_FROM_BYTES` or more
    uncompressed. RFC 7692 lets each message choose (RSV1 unset); the peer's inflater never sees them,
    so the two sliding windows stay in step."""

    def encode(self, frame: Frame) -> Frame:
        whole = frame.opcode not in CTRL_OPCODES and frame.opcode is not CONT and frame.fin
        if whole and len(frame.data) >= UNCOMPRESSED_FROM_BYTES:
            return frame
        return super().encode(frame)


class SkipLargeMessagesFactory(ServerPerMessageDeflateFactory):
    """Negotiates exactly as websockets does, then sends through `SkipLargeMessages`."""

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, made = super().process_request_params(params, accepted_extensions)
        return response, SkipLargeMessages(
            made.remote_no_context_takeover,
            made.local_no_context_takeover,
            made.remote_max_window_bits,
            made.local_max_window_bits,
            made.compress_settings,
        )


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with uvicorn's own deflate settings, big messages excepted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.ws_per_message_deflate:
            self.conn.available_extensions = [
                SkipLargeMessagesFactory(server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5})
            ]
