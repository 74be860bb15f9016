"""Work handed to the generation thread to do between two steps, for a caller on an event loop awaiting its end."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable

InUse = frozenset[str | None]  # the adapters of the turns in the batch or waiting for it


class Errand:
    """`work` runs on the generation thread between two steps, once `ready` (asked at each step with the adapters
    in use) says so; its outcome, a result or the exception it raised, goes to whoever awaits `done`."""

    def __init__(self, work: Callable[[], None], ready: Callable[[InUse], bool] = lambda _: True) -> None:
        self.work = work
        self.ready = ready
        self.future: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run(self, in_use: InUse) -> bool:
        """Do the work if ready (generation thread); False: not yet, ask again after the next step."""
        if not self.ready(in_use):
            return False
        try:
            self.work()
        except BaseException as exc:  # the caller's to answer; the generation thread goes on
            self.future.set_exception(exc)
        else:
            self.future.set_result(None)
        return True

    def abandon(self) -> None:
        """The generation thread has stopped: the caller hears so instead of waiting forever."""
        if not self.future.done():
            self.future.set_exception(RuntimeError("the engine stopped"))

    async def done(self) -> None:
        await asyncio.wrap_future(self.future)
