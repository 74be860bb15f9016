"""The frames waiting for one connection's writer, and the exception that ends a connection."""

from __future__ import annotations

import asyncio
import collections

from gateway import protocol as p
from gateway.errors import CloseCode


class ConnectionClosing(Exception):
    """Raised inside the connection to end it with a close code of ours."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Outbox:
    """Frames waiting for the writer. Token deltas for the same turn merge while they wait, so a slow
    reader gets fewer, larger frames; past `max_frames` the reader is too slow and is closed."""

    def __init__(self, max_frames: int) -> None:
        self._frames: collections.deque[p.ServerFrame] = collections.deque()
        self._ready = asyncio.Event()
        self._max_frames = max_frames
        self.overflowed = False

    def put(self, frame: p.ServerFrame) -> None:
        last = self._frames[-1] if self._frames else None
        if isinstance(frame, p.TokenFrame) and isinstance(last, p.TokenFrame) and last.id == frame.id:
            self._frames[-1] = p.TokenFrame(id=frame.id, text=last.text + frame.text)
        elif len(self._frames) >= self._max_frames:
            self.overflowed = True
        else:
            self._frames.append(frame)
        self._ready.set()

    async def get(self) -> p.ServerFrame:
        while not self._frames:
            if self.overflowed:
                raise ConnectionClosing(CloseCode.SLOW_CONSUMER, "client is not reading")
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()
