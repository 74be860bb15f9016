"""Tests for gateway.ws.frame_intake: checks run at once, outcomes in the order received per source, `settled`."""

from __future__ import annotations

import asyncio

from gateway.errors import ErrorCode, GatewayError
from gateway.ws.frame_intake import FrameIntake


async def checked(value: str, gate: asyncio.Event) -> str:
    await gate.wait()
    if value == "bad":
        raise GatewayError(ErrorCode.BAD_IMAGE, "no image")
    return value


async def test_outcomes_follow_the_order_received_even_when_a_later_check_ends_first() -> None:
    """A source's frames are added (or refused) in the order they came, whichever check finishes first."""
    intake, seen = FrameIntake(), list[str]()
    gates = [asyncio.Event() for _ in range(3)]
    for value, gate in zip(["a", "bad", "c"], gates, strict=True):
        intake.take("camera", checked(value, gate), seen.append, lambda exc: seen.append(f"refused {exc}"))
    gates[2].set()
    gates[1].set()
    for _ in range(10):  # the later checks finish; their outcomes still wait for the first frame's
        await asyncio.sleep(0)
    early = list(seen)
    gates[0].set()
    await intake.settled()
    assert early == []
    assert seen[0] == "a" and seen[1].startswith("refused") and seen[2] == "c" and len(intake) == 0


async def test_settled_waits_only_for_the_named_sources() -> None:
    """`settled(["screen"])` returns while the camera's frame is still being checked."""
    intake, seen = FrameIntake(), list[str]()
    camera, screen = asyncio.Event(), asyncio.Event()
    intake.take("camera", checked("cam", camera), seen.append, lambda exc: None)
    intake.take("screen", checked("scr", screen), seen.append, lambda exc: None)
    screen.set()
    await intake.settled(["screen"])
    assert seen == ["scr"] and len(intake) == 1
    camera.set()
    await intake.settled()
    assert seen == ["scr", "cam"] and len(intake) == 0
