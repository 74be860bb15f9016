"""Letting go of big client JSON a slice at a time, so freeing half a million values holds up no other client."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

# Freeing a schema's free-form JSON of 500k values in one go took 50-110 ms of one event-loop callback: below
# this many message bytes a value holds too few values for it to matter, and is simply dropped.
LET_GO_BYTES = 256 * 1024
SLICE_VALUES = 8192  # values let go between two pauses for other clients' work
SWEEP_S = 1.0  # how often kept schemas are looked at for one nothing else holds any more

# sys.getrefcount of a value held only by one local (or container slot) and by its own argument: any more,
# and something else (a session's stored format, a running turn) still holds it, so dropping ours frees nothing.
_ONLY_OURS = 2


async def dismantle(held: list[Any]) -> None:
    """Free the values in `held` (the caller's only references) a slice at a time, dismantling each dict and
    list nothing else holds; what another owner holds is left whole."""
    freed = 0
    while held:
        value = held.pop()
        if type(value) in (dict, list) and sys.getrefcount(value) == _ONLY_OURS:
            held.extend(value.values() if isinstance(value, dict) else value)
            value.clear()  # its entries live on in `held`, each let go in turn
        del value
        freed += 1
        if freed % SLICE_VALUES == 0:
            await asyncio.sleep(0)


class Keeper:
    """Big accepted schemas, held until nothing else holds them, then let go a slice at a time. A schema's
    last other holder (a replaced `configure`, a turn's end, the format-key cache) drops it in whatever
    callback it runs; holding one reference here moves the freeing to `sweep`. Event loop only."""

    def __init__(self) -> None:
        self._kept: dict[int, Any] = {}  # by id(): a kept value is alive, so its id is not reused
        self._sweeping: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, value: Any) -> None:
        """Hold `value` until `sweep` finds it held by nothing else (swept every SWEEP_S while any is kept)."""
        self._kept[id(value)] = value
        if self._sweeping is None or self._sweeping.done():
            self._sweeping = asyncio.get_running_loop().create_task(self._sweep_while_kept())

    async def sweep(self) -> int:
        """Let go of every kept value nothing else holds, a slice at a time; how many there were."""
        # Read straight from the dict: its slot and getrefcount's argument are the only references then.
        gone = [self._kept.pop(key) for key in list(self._kept) if sys.getrefcount(self._kept[key]) == _ONLY_OURS]
        count = len(gone)
        await dismantle(gone)
        return count

    def close(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
        self._kept.clear()

    async def _sweep_while_kept(self) -> None:
        while self._kept:
            await asyncio.sleep(SWEEP_S)
            await self.sweep()
