"""A watch's loop: an `unwatch` never cuts a watch turn's start in half."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from gateway.core.request import TurnRequest
from gateway.errors import GatewayError
from gateway.ws.live_session import LiveSession
from gateway.ws.watch import WatchSpec, stop_watch, watch_loop


def watching_session() -> Any:
    """Just what the loop reads: a window whose snapshot always holds a frame it has not asked about."""
    window = SimpleNamespace(snapshot=lambda: SimpleNamespace(version=1))
    return SimpleNamespace(windows={"camera": window}, watcher=None)


async def test_an_unwatch_during_a_watch_turns_start_lets_the_start_finish() -> None:
    """The start (submit, then the store write of the turn in progress) runs to its end though the watch is stopped
    in its middle: a cut start would leave a running turn the session does not know is the watch's."""
    live = watching_session()
    entered, gate = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    async def start(request: TurnRequest) -> asyncio.Event | None:
        entered.set()
        await gate.wait()  # the store write, in the real start
        finished.append(request.id)
        return asyncio.Event()

    def refuse(turn_id: str, exc: GatewayError) -> None:
        raise AssertionError(f"{turn_id} refused: {exc}")

    announced: list[float | None] = []
    spec = WatchSpec("camera", 0.0, "what?", 3)
    live.watcher = asyncio.create_task(watch_loop(cast(LiveSession, live), spec, start, refuse, announced.append))
    await entered.wait()
    watcher = live.watcher
    assert stop_watch(cast(LiveSession, live)) and live.watcher is None
    gate.set()
    await asyncio.gather(watcher, return_exceptions=True)
    for _ in range(3):
        await asyncio.sleep(0)
    assert watcher.cancelled() and finished == ["watch-1"]
    assert len(announced) == 2 and announced[-1] is None  # its one tick announced as it was set, withdrawn at its end
