"""A small asyncio client for the gateway's WebSocket protocol (used by tests, the benchmark and scripts)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import websockets


@dataclass
class TurnResult:
    """Everything the server sent for one turn, from `accepted` to `done`."""

    id: str
    accepted: dict[str, Any] | None = None
    deltas: list[str] = field(default_factory=list)
    done: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)  # perf_counter at each token frame
    sent_at: float = 0.0

    @property
    def text(self) -> str:
        return "".join(self.deltas)


class GatewayClient:
    """One WebSocket session speaking msgpack. Use `async with GatewayClient(url) as client:`."""

    def __init__(self, url: str, **connect_kwargs: Any) -> None:
        self.url = url
        self._connect_kwargs = {"max_size": 64 * 1024 * 1024, "subprotocols": ["gateway.msgpack"], **connect_kwargs}
        self.ws: Any = None
        self.ready: dict[str, Any] = {}

    async def __aenter__(self) -> GatewayClient:
        self.ws = await websockets.connect(self.url, **self._connect_kwargs)
        self.ready = await self.recv()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(msgpack.packb(frame, use_bin_type=True))

    async def recv(self) -> dict[str, Any]:
        data = await self.ws.recv()
        if isinstance(data, str):
            import json

            return dict(json.loads(data))
        return dict(msgpack.unpackb(data, raw=False))

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a frame and return the next frame the server sends."""
        await self.send(frame)
        return await self.recv()

    async def start_turn(
        self, turn_id: str, text: str, images: list[bytes] | None = None, image_urls: list[str] | None = None, **options: Any
    ) -> None:
        frame: dict[str, Any] = {"type": "turn", "id": turn_id, "text": text}
        if images:
            frame["images"] = images
        if image_urls:
            frame["image_urls"] = image_urls
        if options:
            frame["options"] = options
        await self.send(frame)

    async def collect(self, turn_id: str, result: TurnResult | None = None) -> TurnResult:
        """Read frames until this turn's `done` (or an error that rejects it)."""
        result = result or TurnResult(id=turn_id)
        while True:
            frame = await self.recv()
            kind, fid = frame.get("type"), frame.get("id")
            if kind == "accepted" and fid == turn_id:
                result.accepted = frame
            elif kind == "token" and fid == turn_id:
                result.deltas.append(frame["text"])
                result.token_times.append(time.perf_counter())
            elif kind == "done" and fid == turn_id:
                result.done = frame
                return result
            elif kind == "error":
                result.errors.append(frame)
                if fid == turn_id and result.accepted is None:
                    return result

    async def turn(
        self, turn_id: str, text: str, images: list[bytes] | None = None, image_urls: list[str] | None = None, **options: Any
    ) -> TurnResult:
        result = TurnResult(id=turn_id, sent_at=time.perf_counter())
        await self.start_turn(turn_id, text, images, image_urls, **options)
        return await self.collect(turn_id, result)
