"""A small asyncio client for the gateway's WebSocket protocol (used by tests, the benchmark and scripts)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
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

    async def stream_frames(self, source: str, frames: Iterable[bytes], fps: float | None = None) -> int:
        """Send each image as a `frame` of the live window `source`, stamped with the time now, paced at `fps`
        (by default the server's `max_frames_per_second`, so none is dropped); how many were sent."""
        interval_s = 1 / (fps or float(self.ready["limits"].get("max_frames_per_second", 2)))
        sent = 0
        for image in frames:
            if sent:
                await asyncio.sleep(interval_s)
            await self.send({"type": "frame", "source": source, "image": image, "ts": int(time.time() * 1000)})
            sent += 1
        return sent

    async def watch(self, source: str, every_s: float, text: str, max_tokens: int | None = None) -> None:
        """Have the server ask `text` about `source` every `every_s` while it changes (turns `watch-1`, ...)."""
        frame: dict[str, Any] = {"type": "watch", "source": source, "every_s": every_s, "text": text}
        if max_tokens is not None:
            frame["max_tokens"] = max_tokens
        await self.send(frame)

    async def unwatch(self) -> None:
        await self.send({"type": "unwatch"})

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a frame and return the next frame the server sends."""
        await self.send(frame)
        return await self.recv()

    async def start_turn(
        self,
        turn_id: str,
        text: str,
        images: list[bytes] | None = None,
        image_urls: list[str] | None = None,
        videos: list[bytes] | None = None,
        live: bool | dict[str, Any] = False,
        **options: Any,
    ) -> None:
        frame: dict[str, Any] = {"type": "turn", "id": turn_id, "text": text}
        if images:
            frame["images"] = images
        if image_urls:
            frame["image_urls"] = image_urls
        if videos:
            frame["videos"] = videos
        if live:
            frame["live"] = live
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

    async def turn(self, turn_id: str, text: str, images: list[bytes] | None = None, **fields: Any) -> TurnResult:
        """`start_turn` (the same arguments: `image_urls`, `videos`, `live`, sampling options), then
        `collect` its frames until its `done`."""
        result = TurnResult(id=turn_id, sent_at=time.perf_counter())
        await self.start_turn(turn_id, text, images, **fields)
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


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})


def frames_from(path: Path, fps: float = 2.0) -> Iterator[bytes]:
    """A folder's images in name order, or a video file's frames `fps` per second of video as JPEG: what a
    camera would send, for `GatewayClient.stream_frames`."""
    if path.is_dir():
        for image in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            yield image.read_bytes()
        return
    import av  # only a client streaming a video file needs PyAV

    with av.open(str(path)) as container:
        next_s = 0.0
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time + 1e-6 < next_s:
                continue
            next_s += 1 / fps
            out = io.BytesIO()
            frame.to_image().save(out, format="JPEG", quality=85)  # type: ignore[no-untyped-call]
            yield out.getvalue()


def _decode(data: bytes | str) -> dict[str, Any]:
    if isinstance(data, str):
        return dict(json.loads(data))
    return dict(msgpack.unpackb(data, raw=False))
