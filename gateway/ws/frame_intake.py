"""Live frames taken in off the reader: checked and hashed at once on the image workers, added in the order received."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

Checked = TypeVar("Checked")

log = logging.getLogger("gateway.ws.endpoint")


class FrameIntake:
    """A session's frames between their arrival and their window, per source. The reader hands each admitted frame
    over and reads on (a turn no longer waits behind earlier frames' decoding); its check starts at once, but its
    outcome (added, or refused) waits for the frame received before it on the same source, so a window takes its
    frames in the order sent. Bounded by the window's admission (a window's frames per source, live_window.py): a frame past
    it is dropped at the door, never queued. The rule a live turn keeps: it reads every frame received before it on
    its source (`settled`), and none that came after."""

    def __init__(self) -> None:
        self._last: dict[str, asyncio.Task[None]] = {}  # per source, the latest frame's intake, while it runs

    def take(
        self,
        source: str,
        checking: Coroutine[Any, Any, Checked],
        added: Callable[[Checked], None],
        refused: Callable[[Exception], None],
    ) -> None:
        """Run `checking` now; then, once the source's earlier frame is through, `added` with what it gave, or
        `refused` with what it raised (each handles its own refusals: an exception from them is a bug, logged)."""
        task = asyncio.get_running_loop().create_task(_in_turn(self._last.get(source), checking, added, refused))
        self._last[source] = task
        task.add_done_callback(lambda done: self._finished(source, done))

    async def settled(self, sources: Iterable[str] | None = None) -> None:
        """Wait until every frame received so far on `sources` (all when None) has joined its window or been refused."""
        running = [task for source, task in self._last.items() if sources is None or source in sources]
        if running:
            await asyncio.wait(running)

    def __len__(self) -> int:
        """Sources with a frame still being taken in."""
        return len(self._last)

    def _finished(self, source: str, task: asyncio.Task[None]) -> None:
        if self._last.get(source) is task:
            del self._last[source]
        if not task.cancelled() and task.exception() is not None:  # a bug: the frame is lost, the session goes on
            log.error("a live frame's intake failed", exc_info=task.exception())


async def _in_turn(
    before: asyncio.Task[None] | None,
    checking: Coroutine[Any, Any, Checked],
    added: Callable[[Checked], None],
    refused: Callable[[Exception], None],
) -> None:
    outcome: Checked | Exception
    try:
        outcome = await checking
    except Exception as exc:  # its refusal waits its turn too; a CancelledError ends the task
        outcome = exc
    if before is not None:
        await asyncio.wait([before])  # whatever became of it, added or refused, it is through
    if isinstance(outcome, Exception):
        refused(outcome)
    else:
        added(outcome)
