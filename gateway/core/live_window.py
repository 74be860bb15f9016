"""Live windows: the latest distinct frames of each camera or screen a session streams, bounded in frames,
bytes and rate, near-duplicates merged; pure (the caller passes the time), what a live turn is answered over."""

from __future__ import annotations

import enum
import io
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace

from PIL import Image

from gateway.engine.contract import ChatImage
from gateway.errors import ErrorCode, GatewayError

# The perceptual hash is a 32x32 grey thumbnail (each cell a region's mean brightness), compared cell by cell.
# dHash was tried first and refused: on a screen, a new line of text flips none of its 64 bits (nor 1 of
# 256), since its bits see only gradients between cells, and on a camera noise flips bits in flat regions.
# Measured on 640x480 scenes and 1280x720 screens re-encoded as JPEG (q80) with sensor noise: a still scene
# moves a cell by at most 4 grey levels (3% exposure drift included, once the overall shift is taken out),
# one new line of text by 26, a 40 px object moving by 120. So a frame merges within 8 levels: twice the
# noise, a third of the smallest change a user would ask about.
THUMB_SIDE = 32
MERGE_DISTANCE = 8
# The overall brightness shift taken out before comparing, at most: exposure wanders by a few levels, while
# a scene that turns dark or bright all over (lights off, a screen changing page colour) has changed.
MAX_EXPOSURE_SHIFT = 16
# Frames admitted but not yet added (their hash is computed on the decode pool): past this many a frame is
# dropped at the door, so a busy pool never holds a queue of one source's frames.
MAX_PENDING = 2


def frame_thumb(data: bytes) -> bytes:
    """A checked image's perceptual hash (its 32x32 grey thumbnail); for the decode pool, not the event loop."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (THUMB_SIDE, THUMB_SIDE))  # JPEG decodes at up to 1/8 scale: 80x60 for a 640x480 frame
        return thumb_of(image)


def thumb_of(image: Image.Image) -> bytes:
    """The perceptual hash of decoded pixels (reduced ones will do: see `frame_thumb`)."""
    return image.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX).tobytes()


def thumb_distance(a: bytes, b: bytes) -> int:
    """The largest change of any cell in grey levels, an overall brightness shift of up to
    MAX_EXPOSURE_SHIFT levels taken out (a camera's exposure wanders over a still scene)."""
    shift = max(-MAX_EXPOSURE_SHIFT, min(MAX_EXPOSURE_SHIFT, round((sum(a) - sum(b)) / len(a))))
    return max(abs(x - y - shift) for x, y in zip(a, b))


class Outcome(enum.Enum):
    ACCEPTED = "accepted"  # a new distinct frame
    MERGED = "merged"  # a near-duplicate of the latest: only that frame's last time moved


@dataclass(frozen=True)
class LiveLimits:
    max_frames: int
    max_bytes: int
    frames_per_second: float  # taken per window, in bursts of one second's worth
    merge_distance: int = MERGE_DISTANCE


@dataclass(frozen=True)
class LiveFrame:
    """A distinct frame: the image first seen (kept, so a still scene's image and its encoding stay the
    same), and the client times it was first and last seen."""

    image: ChatImage
    thumb: bytes
    first_ts_ms: int
    last_ts_ms: int
    merged: int = 0  # near-duplicates merged into it


@dataclass(frozen=True)
class LiveSnapshot:
    """The frames a live turn is answered over, oldest first, and the window's version when taken."""

    frames: tuple[LiveFrame, ...]
    version: int

    @property
    def first_ts_ms(self) -> int:
        return self.frames[0].first_ts_ms

    @property
    def last_ts_ms(self) -> int:
        return self.frames[-1].last_ts_ms


@dataclass
class LiveCounters:
    accepted: int = 0  # distinct frames added
    merged: int = 0  # near-duplicates merged into the latest frame
    dropped: int = 0  # over the rate, or while MAX_PENDING frames were being hashed
    evicted: int = 0  # distinct frames pushed out by newer ones (the window's frame or byte bound)


class LiveWindow:
    """One source's window. Invariants: at most `max_frames` frames and `max_bytes` image bytes; no frame is
    within `merge_distance` of the one before it; frames in the order they were added; the version moves
    exactly when a distinct frame is added. A frame is first `admit`ted (the rate, on arrival, before any
    decoding), then `add`ed with its hash, or `release`d if its image was refused."""

    def __init__(self, limits: LiveLimits, now_s: float) -> None:
        self.limits = limits
        self.counters = LiveCounters()
        self._frames: deque[LiveFrame] = deque()
        self._bytes = 0
        self._version = 0
        self._pending = 0
        self._burst = max(1.0, limits.frames_per_second)
        self._tokens = self._burst
        self._refilled_s = now_s
        self.read = False  # a live turn has read this window: its new frames are worth processing as they come
        self._read_version = 0  # the version its last snapshot read

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def image_bytes(self) -> int:
        return self._bytes

    def admit(self, now_s: float) -> bool:
        """Whether a frame arriving now may be hashed and added; a refused one is counted as dropped."""
        elapsed_s = max(0.0, now_s - self._refilled_s)  # a clock read out of order adds nothing
        self._tokens = min(self._burst, self._tokens + elapsed_s * self.limits.frames_per_second)
        self._refilled_s = max(self._refilled_s, now_s)
        if self._tokens < 1 or self._pending >= MAX_PENDING:
            self.counters.dropped += 1
            return False
        self._tokens -= 1
        self._pending += 1
        return True

    def release(self) -> None:
        """An admitted frame that will not be added (its image was refused)."""
        self._pending = max(0, self._pending - 1)

    def add(self, image: ChatImage, thumb: bytes, ts_ms: int) -> Outcome:
        """Add an admitted frame: merged into the latest when within the merge distance of it, else appended,
        the oldest frames going until the window is within its bounds. A frame larger than the whole
        window is refused (`too_large`)."""
        self.release()
        if len(image.data) > self.limits.max_bytes:
            raise GatewayError(
                ErrorCode.TOO_LARGE, f"a live frame of {len(image.data)} bytes exceeds the window's {self.limits.max_bytes}"
            )
        latest = self._frames[-1] if self._frames else None
        if latest is not None and thumb_distance(thumb, latest.thumb) <= self.limits.merge_distance:
            # Compared with the frame kept, not the last merged, so a slow drift still shows once it adds up.
            self._frames[-1] = replace(latest, last_ts_ms=max(latest.last_ts_ms, ts_ms), merged=latest.merged + 1)
            self.counters.merged += 1
            return Outcome.MERGED
        self._frames.append(LiveFrame(image=image, thumb=thumb, first_ts_ms=ts_ms, last_ts_ms=ts_ms))
        self._bytes += len(image.data)
        self._version += 1
        self.counters.accepted += 1
        while len(self._frames) > self.limits.max_frames or self._bytes > self.limits.max_bytes:
            self._bytes -= len(self._frames.popleft().image.data)
            self.counters.evicted += 1
        return Outcome.ACCEPTED

    def snapshot(self, count: int | None = None) -> LiveSnapshot | None:
        """The latest `count` frames (all when None), oldest first, for a live turn (the window is `read` from
        then on); None while the window is empty."""
        if not self._frames or (count is not None and count < 1):
            return None
        frames = tuple(self._frames)
        self.read, self._read_version = True, self._version
        return LiveSnapshot(frames=frames[-count:] if count is not None else frames, version=self._version)

    @property
    def unread(self) -> int:
        """Distinct frames added since the last snapshot (all of them, before the first)."""
        return self._version - self._read_version

    def changed_since(self, version: int) -> bool:
        """Whether a distinct frame came after the snapshot of that version (a watch turn skips when not)."""
        return self._version != version


class LiveWindows:
    """A session's windows by source name, at most `max_sources` of them."""

    def __init__(self, limits: LiveLimits, max_sources: int) -> None:
        self.limits = limits
        self.max_sources = max_sources
        self._windows: dict[str, LiveWindow] = {}

    def window(self, source: str, now_s: float) -> LiveWindow:
        """That source's window, opened on its first frame; a source beyond `max_sources` is refused."""
        found = self._windows.get(source)
        if found is not None:
            return found
        if len(self._windows) >= self.max_sources:
            raise GatewayError(ErrorCode.TOO_LARGE, f"a session streams at most {self.max_sources} live sources")
        opened = self._windows[source] = LiveWindow(self.limits, now_s)
        return opened

    def get(self, source: str) -> LiveWindow | None:
        return self._windows.get(source)

    def close(self, source: str) -> None:
        """Forget a source's window (its stream stopped)."""
        self._windows.pop(source, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._windows)
