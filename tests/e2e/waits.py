"""Waiting for the server's next frame of a kind: an `error` in its place fails at once, showing it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Frame = dict[str, Any]


async def next_of(recv: Callable[[], Awaitable[Frame]], *kinds: str, turn_id: str | None = None) -> Frame:
    """The next frame of one of `kinds` (of turn `turn_id`, when given), skipping others. An `error` frame
    not asked for raises: a loop that waited for one kind only would wait for ever (until the test's
    timeout) when the server answered with an error instead, and never say which."""
    while True:
        frame = await recv()
        if frame["type"] in kinds and (turn_id is None or frame.get("id") == turn_id):
            return frame
        if frame["type"] == "error":
            raise AssertionError(f"waiting for {' or '.join(kinds)}, the server answered {frame}")
