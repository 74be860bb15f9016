"""A small asyncio client for the gateway's WebSocket protocol (used by tests, the benchmark and scripts)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import websockets

# Closes after which reconnecting would be wrong: the session moved elsewhere, or the server said why.
FINAL_CLOSE_CODES = frozenset({4003, 1008, 4002})


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
    """One WebSocket session speaking msgpack. Use `async with GatewayClient(url) as client:`.

    With `resume=True`, a dropped connection is reconnected with backoff and the session resumed: the
    caller sees one uninterrupted stream of frames (each `seq` once, in order), a reply that was
    streaming included. `reconnects` counts how often that happened."""

    def __init__(self, url: str, resume: bool = False, max_retries: int = 8, **connect_kwargs: Any) -> None:
        self.url = url
        self.resume = resume
        self.max_retries = max_retries
        self._connect_kwargs = {"max_size": 64 * 1024 * 1024, "subprotocols": ["gateway.msgpack"], **connect_kwargs}
        self.ws: Any = None
        self.ready: dict[str, Any] = {}
        self.last_seq = 0
        self.reconnects = 0

    async def __aenter__(self) -> GatewayClient:
        self.ws = await websockets.connect(self.url, **self._connect_kwargs)
        self.ready = await self.recv()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    async def send(self, frame: dict[str, Any]) -> None:
        try:
            await self.ws.send(msgpack.packb(frame, use_bin_type=True))
        except websockets.ConnectionClosed as closed:
            if not self._may_resume(closed):
                raise
            await self._reconnect()
            await self.ws.send(msgpack.packb(frame, use_bin_type=True))

    async def recv(self) -> dict[str, Any]:
        while True:
            try:
                frame = _decode(await self.ws.recv())
            except websockets.ConnectionClosed as closed:
                if not self._may_resume(closed):
                    raise
                await self._reconnect()
                continue
            seq = frame.get("seq")
            if isinstance(seq, int):
                if seq <= self.last_seq:
                    continue  # already delivered before the drop
                self.last_seq = seq
            return frame

    def _may_resume(self, closed: websockets.ConnectionClosed) -> bool:
        code = closed.rcvd.code if closed.rcvd is not None else 1006
        return self.resume and bool(self.ready) and code not in FINAL_CLOSE_CODES

    async def _reconnect(self) -> None:
        """A new connection, then `resume` from the last seq seen; its own fresh session is discarded."""
        delay = 0.05
        for attempt in range(self.max_retries):
            try:
                ws = await websockets.connect(self.url, **self._connect_kwargs)
                _decode(await ws.recv())  # the new connection's own `ready`
                session, token = self.ready["session"], self.ready["resume_token"]
                await ws.send(msgpack.packb({"type": "resume", "session": session, "token": token, "last_seq": self.last_seq}))
                answer = _decode(await ws.recv())
                if answer.get("type") != "resumed":
                    await ws.close()
                    raise ConnectionError(f"the session could not be resumed: {answer.get('message')}")
                self.ws = ws
                self.reconnects += 1
                return
            except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed):
                if attempt == self.max_retries - 1:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

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

    # ---- editing the conversation (PROTOCOL.md, "The conversation as items") ----------------------

    async def regenerate(self, turn_id: str, item_id: str | None = None, **options: Any) -> TurnResult:
        """A new reply in place of reply `item_id` (default: the last), streamed like a turn."""
        frame: dict[str, Any] = {"type": "regenerate", "id": turn_id, "item_id": item_id}
        if options:
            frame["options"] = options
        result = TurnResult(id=turn_id, sent_at=time.perf_counter())
        await self.send(frame)
        return await self.collect(turn_id, result)

    async def switch(self, item_id: str) -> dict[str, Any]:
        """Make the branch through `item_id` active; the `history` frame (or an `error`)."""
        return await self.request({"type": "switch", "item_id": item_id})

    async def fork(self, item_id: str | None = None) -> dict[str, Any]:
        """A new session of the path to `item_id` (default: the active path); `forked` (its `session` and
        `resume_token`, for `resume`) or an `error`. This client stays on its session."""
        return await self.request({"type": "fork", "item_id": item_id})

    async def truncate(self, item_id: str, chars: int) -> dict[str, Any]:
        """Reply `item_id` keeps its first `chars` characters (code points); the `history` frame (or an `error`)."""
        return await self.request({"type": "truncate", "item_id": item_id, "chars": chars})


def _decode(data: bytes | str) -> dict[str, Any]:
    if isinstance(data, str):
        return dict(json.loads(data))
    return dict(msgpack.unpackb(data, raw=False))
