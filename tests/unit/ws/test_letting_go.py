"""Letting go of a big decoded frame: its free-form JSON freed a slice at a time, what others hold left whole."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

from gateway.ws import protocol as p
from gateway.ws.letting_go import LET_GO_BYTES, SLICE_VALUES, let_go
from tests.unit.ws.test_msgpack_slices import schema_turn

ROWS = 64  # lists of 1,000 values: 64,000 values, past SLICE_VALUES several times


def wide_frame() -> tuple[p.ClientFrame, dict[str, Any]]:
    frame = p.decode(schema_turn({"enum": [[n] * 1000 for n in range(ROWS)]}))
    assert isinstance(frame, p.TurnFrame) and isinstance(frame.options.response_format, p.JsonSchemaFormat)
    return frame, frame.options.response_format.json_schema.schema


async def pauses_while(frames: list[p.ClientFrame], nbytes: int) -> int:
    """How many times let_go pauses for the loop's other work."""
    with mock.patch("gateway.core.letting_go.asyncio.sleep", wraps=asyncio.sleep) as sleep:
        await let_go(frames, nbytes)
    return sleep.call_count


async def test_a_big_frame_is_let_go_a_slice_at_a_time() -> None:
    """The frame leaves the caller's list and its values are freed with a pause every SLICE_VALUES."""
    frames = [wide_frame()[0]]
    assert await pauses_while(frames, LET_GO_BYTES) >= ROWS * 1000 // SLICE_VALUES and frames == []


async def test_json_that_something_else_holds_is_left_whole() -> None:
    """A schema still held elsewhere (a session's stored format, a running turn) keeps every value."""
    frame, schema = wide_frame()
    frames = [frame]
    del frame
    await let_go(frames, LET_GO_BYTES)
    assert frames == [] and len(schema["enum"]) == ROWS and all(row == [n] * 1000 for n, row in enumerate(schema["enum"]))


async def test_a_small_frame_is_simply_dropped() -> None:
    """Below LET_GO_BYTES the frame is dropped at once, with no pause."""
    frames = [wide_frame()[0]]
    assert await pauses_while(frames, LET_GO_BYTES - 1) == 0 and frames == []
