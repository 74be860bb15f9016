"""Live frames processed for the model as they arrive, once their window has been read, so a live turn finds them ready."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial

from gateway.engine.contract import ChatImage, EncodesAhead, Engine


class FramesAhead:
    """Each distinct frame's processing (the engine's `prepare`, on its image pool) started at most once, as it
    joins a window a live turn has read: the next live turn awaits those still running instead of processing its
    new frames itself, after its own arrival (measured: most of a live turn's extra time to first token under
    load). A window nobody asks about costs only its hash.

    At most `workers` frames are processed at once (the image pool's threads), the others wait here in arrival
    order, so the pool holds no backlog of frames ahead: a turn's own `prepare` runs next, never behind other
    sessions' frames queued before it. A turn takes its frames still waiting here for its own `prepare` (beside
    those running) rather than waiting for them. At most `max_frames` are running or waiting; a frame past that
    is left to its turn, so frames never queue without bound.

    With `encode`, a frame processed here is then handed to an engine that `EncodesAhead` (the local one), which
    encodes it on its vision tower while it has nothing else to do: the turn then skips the tower too."""

    def __init__(self, engine: Engine, max_frames: int, workers: int, encode: bool = False) -> None:
        self.engine = engine
        self.max_frames = max_frames
        self.workers = max(1, workers)
        self.encoder = engine if encode and isinstance(engine, EncodesAhead) else None
        self._running: dict[str, asyncio.Task[None]] = {}  # by the frame's sha256
        self._waiting: dict[str, ChatImage] = {}  # by the frame's sha256, the oldest first

    def start(self, image: ChatImage) -> None:
        """Queue `image` (a frame just added to a window that has been read) for processing, unless it is under way
        or queued, the bound is reached, or the engine reads the window as one clip (it processes clips, not frames)."""
        key = image.sha256
        if key in self._running or key in self._waiting or self.engine.reads_video:
            return
        if len(self._running) + len(self._waiting) < self.max_frames:
            self._waiting[key] = image
            self._next()

    async def ready(self, images: Sequence[ChatImage]) -> None:
        """Take those of `images` still waiting here (the turn's own `prepare` processes them now) and wait for those
        being processed; a failure is the turn's own `prepare`'s to report."""
        for image in images:
            self._waiting.pop(image.sha256, None)
        running = [self._running[image.sha256] for image in images if image.sha256 in self._running]
        if running:
            await asyncio.wait(running)

    def _next(self) -> None:
        while self._waiting and len(self._running) < self.workers:
            key = next(iter(self._waiting))
            image = self._waiting.pop(key)
            task = asyncio.get_running_loop().create_task(self.engine.prepare([image]))
            self._running[key] = task
            task.add_done_callback(partial(self._finished, image))

    def _finished(self, image: ChatImage, task: asyncio.Task[None]) -> None:
        del self._running[image.sha256]
        # A failure is retrieved here; the turn that reads the frame processes it again and says why.
        if not task.cancelled() and task.exception() is None and self.encoder is not None:
            self.encoder.encode_ahead([image])
        self._next()
