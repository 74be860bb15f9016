"""A session's server frames, numbered and kept for replay within a byte budget; a writer reads on."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

import msgspec

from gateway.errors import CloseCode, ConnectionClosing
from gateway.ws import protocol as p

_TOKEN_OVERHEAD = 48  # a token frame's fields besides its text, in bytes, roughly


@dataclass
class _Entry:
    frame: p.SessionFrame
    size: int


def _size(frame: p.SessionFrame) -> int:
    if isinstance(frame, p.TokenFrame):
        return len(frame.text) * 4 + _TOKEN_OVERHEAD  # an upper bound: no encoding on the hot path
    if isinstance(frame, p.HistoryFrame):  # megabytes of images: counted, not encoded again on the event loop
        images = sum(len(i.data or b"") + _TOKEN_OVERHEAD for e in frame.turns for i in e.images)
        calls = sum(len(c.arguments) * 4 + len(c.name) * 4 + _TOKEN_OVERHEAD for e in frame.turns for c in e.tool_calls)
        return images + calls + len(frame.system or "") * 4 + sum(len(e.text) * 4 + _TOKEN_OVERHEAD for e in frame.turns)
    return len(msgspec.msgpack.encode(frame))


class Journal:
    """Frames get `seq` as they join. Token deltas of one turn merge while the writer has not taken the
    last one, so a slow or absent reader costs one growing frame, not thousands. Frames the writer has
    taken are kept for replay until `max_bytes` pushes the oldest out; frames not yet taken are never
    dropped, and past `max_unsent` of them the attached reader is too slow."""

    def __init__(self, max_bytes: int, max_unsent: int, next_seq: int = 1) -> None:
        self.max_bytes = max_bytes
        self.max_unsent = max_unsent
        self.next_seq = next_seq
        self.taken = next_seq - 1  # the last seq handed to a writer (or acknowledged by a resuming client)
        self.bytes = 0
        self._entries: collections.deque[_Entry] = collections.deque()
        self._wake = asyncio.Event()
        self._interrupted = False

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    @property
    def unsent(self) -> int:
        return self.last_seq - self.taken

    @property
    def overflowing(self) -> bool:
        """Frames nobody has taken fill the byte budget: a detached turn must stop here."""
        return self.bytes > self.max_bytes and self.unsent > 0

    def append(self, frame: p.SessionFrame) -> None:
        last = self._entries[-1] if self._entries else None
        if (
            isinstance(frame, p.TokenFrame)
            and last is not None
            and isinstance(last.frame, p.TokenFrame)
            and last.frame.id == frame.id
            and last.frame.seq is not None
            and last.frame.seq > self.taken
        ):
            merged = p.TokenFrame(id=frame.id, text=last.frame.text + frame.text, seq=last.frame.seq)
            self.bytes += _size(merged) - last.size
            self._entries[-1] = _Entry(merged, _size(merged))
        else:
            frame.seq = self.next_seq
            self.next_seq += 1
            entry = _Entry(frame, _size(frame))
            self._entries.append(entry)
            self.bytes += entry.size
        self._evict()
        self._wake.set()

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and self._entries:
            oldest = self._entries[0]
            if oldest.frame.seq is None or oldest.frame.seq > self.taken:
                return  # never drop what nobody has read
            self._entries.popleft()
            self.bytes -= oldest.size

    def rewind(self, last_seq: int) -> tuple[int, bool]:
        """A resuming client has seen up to `last_seq`: the writer starts after it. Returns how many
        frames will be replayed and whether some it missed are gone."""
        oldest = self._entries[0].frame.seq if self._entries else self.next_seq
        assert oldest is not None
        start = min(max(last_seq, oldest - 1), self.last_seq)
        gap = last_seq < oldest - 1
        self.taken = start
        self._wake.set()
        return self.last_seq - start, gap

    def interrupt(self) -> None:
        """Wake the writer waiting in `take` with None: it is to follow another journal now."""
        self._interrupted = True
        self._wake.set()

    async def take(self) -> p.SessionFrame | None:
        """The next frame after the last one taken; waits for one; None when interrupted. Raises when
        the reader is too slow."""
        while self.unsent <= 0 and not self._interrupted:
            self._wake.clear()
            await self._wake.wait()
        if self._interrupted:
            self._interrupted = False
            return None
        if self.unsent > self.max_unsent:
            raise ConnectionClosing(CloseCode.SLOW_CONSUMER, "client is not reading")
        first = self._entries[0].frame.seq
        assert first is not None
        entry = self._entries[self.taken + 1 - first]
        self.taken += 1
        self._evict()
        return entry.frame
