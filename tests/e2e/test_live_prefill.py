"""End to end on the demo engine: a live turn's prompt keeps the history's KV warm (history first, its live
exchanges' frames where they stood, then the window's new frames, then the text): only those are prefilled."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from gateway.client import GatewayClient
from gateway.engine.contract import ChatImage, GenerationRequest
from gateway.media.images import ImageLimits, check_image
from tests.conftest import RunningServer, image_bytes
from tests.e2e import test_live_window_ws as live_ws
from tests.e2e.test_live_window_ws import GREEDY, stream

live_server, submitted = live_ws.live_server, live_ws.submitted

FRAMES = [image_bytes("JPEG", color=color, size=(80, 60)) for color in ((220, 20, 20), (20, 20, 220), (20, 200, 20))]


async def test_a_live_turn_reuses_the_history_and_encodes_only_new_frames(
    live_server: RunningServer, submitted: list[GenerationRequest]
) -> None:
    """After a text exchange, a live turn takes its whole prompt before the window from held KV; a second live
    turn over the same frames plus a new one holds the first's whole prompt, frames included, and shows the new
    one alone: no encoder pass needs the held frames' outputs."""
    encoder = live_server.engine.encoder_cache
    async with GatewayClient(live_server.ws_url) as client:
        text = await client.turn("t1", "hello there", **GREEDY)
        await stream(client, [(FRAMES[0], 100), (FRAMES[1], 200)])
        first = await client.turn("l1", "what is it?", live=True, **GREEDY)
        await stream(client, [(FRAMES[2], 300)])
        hits, encoded = encoder.hits, encoder.encoded
        second = await client.turn("l2", "and now?", live=True, **GREEDY)
    assert text.done and first.done and second.done and second.accepted
    assert first.done["usage"]["cached_tokens"] >= text.done["usage"]["prompt_tokens"]
    assert second.done["usage"]["cached_tokens"] >= first.done["usage"]["prompt_tokens"]
    assert second.accepted["live_frames"]["count"] == 3
    assert [len(m.images) for m in submitted[-1].messages] == [0, 0, 2, 0, 1]
    assert (encoder.hits, encoder.encoded) == (hits, encoded)


@pytest.fixture
def prepared(live_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], bool]]:
    """Every `prepare` the engine is asked for during the test: its images' sha256s, and whether all of them
    were processed already when it was asked."""
    calls: list[tuple[list[str], bool]] = []
    engine = live_server.engine
    prepare = engine.prepare

    async def recording(images: Sequence[ChatImage]) -> None:
        calls.append(([image.sha256 for image in images], all(image in engine.loaded.prompt.images for image in images)))
        await prepare(images)

    monkeypatch.setattr(engine, "prepare", recording)
    return calls


async def test_a_read_windows_new_frame_is_processed_as_it_arrives_and_once(
    live_server: RunningServer, prepared: list[tuple[list[str], bool]]
) -> None:
    """A window nobody has asked about costs only its hash; once a live turn has read it, a new distinct frame is
    processed as it arrives, and the next live turn waits for that instead of processing it again: once."""
    cache = live_server.engine.loaded.prompt.images
    new = image_bytes("JPEG", color=(200, 120, 20), size=(80, 60))
    async with GatewayClient(live_server.ws_url) as client:
        await stream(client, [(image_bytes("JPEG", color=(20, 120, 200), size=(80, 60)), 100)])
        assert prepared == []
        first = await client.turn("l1", "what is it?", live=True, **GREEDY)
        misses = cache.misses
        await stream(client, [(new, 200)])
        ahead = len(prepared)
        second = await client.turn("l2", "and now?", live=True, **GREEDY)
    sha = check_image(new, ImageLimits(max_bytes=1 << 20, max_pixels=1 << 20)).sha256
    assert first.done and second.done and second.accepted and second.accepted["live_frames"]["count"] == 2
    assert prepared[ahead - 1] == ([sha], False)  # processing began as the frame arrived, before the turn
    assert prepared[ahead:] == [([sha], True)]  # the turn found it processed: it waited, it did not process it
    assert cache.misses == misses + 1


async def test_a_fork_after_a_live_exchange_reuses_its_frames_kv(live_server: RunningServer) -> None:
    """`fork` after a live exchange: the new session's first turn shows the exchange's frames where they stood,
    so its prompt comes from the KV held for the forking session's (frames included), not a cold prefill."""
    async with GatewayClient(live_server.ws_url) as client:
        await stream(client, [(FRAMES[0], 100), (FRAMES[1], 200)])
        first = await client.turn("l1", "what is it?", live=True, **GREEDY)
        assert first.done
        forked = await client.request({"type": "fork", "id": "f1"})
    async with GatewayClient(live_server.ws_url) as other:
        await other.request({"type": "resume", "session": forked["session"], "token": forked["resume_token"]})
        other.last_seq = 0  # the fork's frames are numbered from 1: the client counted its first session's
        turn = await other.turn("t2", "and then?", **GREEDY)
    assert turn.done and turn.done["usage"]["cached_tokens"] >= first.done["usage"]["prompt_tokens"]
