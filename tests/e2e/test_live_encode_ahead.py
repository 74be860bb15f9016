"""End to end on the demo engine: a live window's new frame is encoded while the engine is idle, so the live turn
that shows it runs no vision-tower pass, and answers as a server that encodes it in the turn does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.client import GatewayClient, TurnResult
from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, image_bytes, start_server, wait_until
from tests.e2e import test_live_window_ws as live_ws
from tests.e2e.test_live_window_ws import GREEDY, stream

live_server = live_ws.live_server  # encodes nothing ahead: the reference

FRAMES = [image_bytes("JPEG", color=color, size=(80, 60)) for color in ((200, 120, 20), (20, 120, 200), (120, 20, 200))]


@pytest.fixture(scope="module")
def ahead_server(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    """The same server encoding frames ahead (the default), with no warm-ups: they would encode the frames too."""
    settings = Settings(max_frames_per_second=1000.0, max_live_sources=2, live_warm_up_frames=0)
    assert settings.live_encode_ahead
    running = start_server(demo_dirs.model, settings)
    yield running
    running.stop()


async def second_live_turn(server: RunningServer) -> tuple[TurnResult, int]:
    """A live turn over two frames, then a new frame and, once the engine has had time for it, a second live turn:
    that turn's result and the vision-tower passes it ran."""
    engine = server.engine
    async with GatewayClient(server.ws_url) as client:
        await stream(client, [(FRAMES[0], 100), (FRAMES[1], 200)])
        first = await client.turn("l1", "what is it?", live=True, **GREEDY)
        assert first.done
        held = len(engine.encoder_cache)
        await stream(client, [(FRAMES[2], 300)])
        if server.settings.live_encode_ahead:
            await wait_until(lambda: len(engine.encoder_cache) == held + 1)
        passes = engine.encoder_meter.passes
        second = await client.turn("l2", "and now?", live=True, **GREEDY)
    return second, engine.encoder_meter.passes - passes


async def test_a_new_frame_is_encoded_before_its_live_turn_which_answers_the_same(
    ahead_server: RunningServer, live_server: RunningServer
) -> None:
    ahead, ahead_passes = await second_live_turn(ahead_server)
    reference, reference_passes = await second_live_turn(live_server)
    assert ahead.done and reference.done and ahead.accepted and ahead.accepted["live_frames"]["count"] == 3
    assert (ahead_passes, reference_passes) == (0, 1)  # the new frame's tower pass: ahead, or in the turn
    assert ahead.text == reference.text and ahead.done["usage"] == reference.done["usage"]
