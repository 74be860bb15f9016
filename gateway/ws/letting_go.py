"""Letting go of a big decoded frame a slice at a time, so freeing half a million values holds up no other client."""

from __future__ import annotations

from typing import Any

from gateway.core.letting_go import LET_GO_BYTES, SLICE_VALUES, dismantle
from gateway.ws import protocol as p

__all__ = ["LET_GO_BYTES", "SLICE_VALUES", "let_go"]


async def let_go(frames: list[p.ClientFrame], nbytes: int) -> None:
    """Take the frames out of `frames` (the caller's only references) and free their free-form JSON a slice
    at a time, dismantling each dict and list nothing else holds; what another owner holds is left whole."""
    if nbytes < LET_GO_BYTES:
        frames.clear()
        return
    held: list[Any] = []
    while frames:
        held.extend(value for _, value in p.frame_json(frames.pop()))  # the frame goes; its JSON stays in `held`
    await dismantle(held)
