"""Letting go of a big decoded frame a slice at a time, so freeing half a million values holds up no other client."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from gateway.ws import protocol as p

# Freeing a frame's free-form JSON of 500k values in one go took 50-110 ms of one event-loop callback: below
# this many message bytes a frame holds too few values for it to matter, and is simply dropped.
LET_GO_BYTES = 256 * 1024
SLICE_VALUES = 8192  # values let go between two pauses for other clients' work

# sys.getrefcount of a value held only by the loop's local and by its own argument: any more, and something
# else (a session's stored format, a running turn) still holds it, so dropping ours frees nothing.
_ONLY_OURS = 2


async def let_go(frames: list[p.ClientFrame], nbytes: int) -> None:
    """Take the frames out of `frames` (the caller's only references) and free their free-form JSON a slice
    at a time, dismantling each dict and list nothing else holds; what another owner holds is left whole."""
    if nbytes < LET_GO_BYTES:
        frames.clear()
        return
    held: list[Any] = []
    while frames:
        held.extend(value for _, value in p.frame_json(frames.pop()))  # the frame goes; its JSON stays in `held`
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
