"""End to end: a `frame`'s check and hash run off the reader; a live turn reads exactly the frames received before it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator

import pytest

from gateway.client import GatewayClient
from gateway.engine.contract import ChatImage
from tests.conftest import RunningServer
from tests.e2e.test_live_window_ws import BLUE, GREEDY, RED, live_server, stream, taken_in

__all__ = ["live_server"]  # the module's server, shared with test_live_window_ws


@pytest.fixture
def held(live_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Every live frame's check waits for this event (on a worker thread, as the real check runs) before it runs."""
    gate = threading.Event()
    attachments = live_server.app.state.ws.hub.turns.attachments
    check = attachments.check_live_frame

    async def held_check(blob: bytes) -> tuple[ChatImage, bytes]:
        await asyncio.get_running_loop().run_in_executor(None, gate.wait)
        return await check(blob)

    monkeypatch.setattr(attachments, "check_live_frame", held_check)
    yield gate
    gate.set()  # nothing stays blocked past the test


async def test_a_turn_is_handled_while_an_earlier_frames_check_still_runs(
    live_server: RunningServer, held: threading.Event
) -> None:
    """A text turn sent after a frame is answered while that frame's check is still held: the reader no longer
    waits for a frame's decode and hash; the frame is still on its way, not lost."""
    async with GatewayClient(live_server.ws_url) as client:
        await client.send({"type": "frame", "source": "camera", "image": RED, "ts": 100})
        text = await client.turn("t1", "hello", **GREEDY)
        intake = live_server.app.state.ws.hub.live[client.ready["session"]].intake
        pending = len(intake)
        held.set()
        await taken_in(live_server, client)
    assert text.done and not text.errors
    assert pending == 1


async def test_a_live_turn_reads_the_frames_received_before_it_even_while_their_check_runs(
    live_server: RunningServer, held: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live turn that arrives while the frames before it are still being checked waits for exactly those, and
    reads them in the order sent."""
    waiting = threading.Event()
    async with GatewayClient(live_server.ws_url) as client:
        intake = live_server.app.state.ws.hub.live[client.ready["session"]].intake
        settled = intake.settled

        async def noted(sources: Iterable[str] | None = None) -> None:
            waiting.set()
            await settled(sources)

        monkeypatch.setattr(intake, "settled", noted)
        await stream(client, [(RED, 100), (BLUE, 200)])
        await client.start_turn("l1", "what now?", live=True, **GREEDY)
        await asyncio.get_running_loop().run_in_executor(None, waiting.wait)  # the turn is in, its frames held
        pending = len(intake)
        held.set()
        result = await client.collect("l1")
    assert pending == 1  # one source's frames, still on their way when the turn arrived
    assert result.done and result.accepted and not result.errors
    assert result.accepted["live_frames"] == {"count": 2, "first_ts": 100, "last_ts": 200, "merged": 0, "still": False}


async def test_a_live_turn_does_not_read_a_frame_sent_after_it(live_server: RunningServer) -> None:
    """A frame received after a live turn is not that turn's: the turn reads the window as the frames before it left it."""
    async with GatewayClient(live_server.ws_url) as client:
        await stream(client, [(RED, 100)])
        await client.start_turn("l1", "what now?", live=True, **GREEDY)
        await client.send({"type": "frame", "source": "camera", "image": BLUE, "ts": 200})
        first = await client.collect("l1")
        second = await client.turn("l2", "and now?", live=True, **GREEDY)
    assert first.accepted and second.accepted
    assert first.accepted["live_frames"] == {"count": 1, "first_ts": 100, "last_ts": 100, "merged": 0, "still": False}
    assert second.accepted["live_frames"] == {"count": 2, "first_ts": 100, "last_ts": 200, "merged": 0, "still": False}
