"""Live frames processed for the model as they arrive, once their window has been read, so a live turn finds them ready."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.engine.contract import ChatImage, Engine


class FramesAhead:
    """Each distinct frame's processing (the engine's `prepare`, on its image pool) started at most once, as it
    joins a window a live turn has read: the next live turn awaits those still running instead of processing its
    new frames itself, after its own arrival (measured: most of a live turn's extra time to first token under
    load). A window nobody asks about costs only its hash. At most `max_running` frames are processed or wait
    for the pool at once; a frame past that is left to its turn, so frames never queue without bound."""

    def __init__(self, engine: Engine, max_running: int) -> None:
        self.engine = engine
        self.max_running = max_running
        self._running: dict[str, asyncio.Task[None]] = {}  # by the frame's sha256

    def start(self, image: ChatImage) -> None:
        """Begin processing `image` (a frame just added to a window that has been read), unless it is under way,
        the bound is reached, or the engine reads the window as one clip (it processes clips, not frames)."""
        if image.sha256 in self._running or len(self._running) >= self.max_running or self.engine.reads_video:
            return
        task = asyncio.get_running_loop().create_task(self.engine.prepare([image]))
        self._running[image.sha256] = task
        task.add_done_callback(lambda done: self._finished(image.sha256, done))

    async def ready(self, images: Sequence[ChatImage]) -> None:
        """Wait for those of `images` being processed ahead; a failure is the turn's own `prepare`'s to report."""
        running = [self._running[image.sha256] for image in images if image.sha256 in self._running]
        if running:
            await asyncio.wait(running)

    def _finished(self, sha256: str, task: asyncio.Task[None]) -> None:
        del self._running[sha256]
        if not task.cancelled():
            task.exception()  # retrieved here; the turn that reads the frame processes it again and says why
