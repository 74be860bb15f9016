"""End to end: `frame` fills a session's live window; a `live` turn is answered over it and leaves only a summary in history."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway.client import GatewayClient
from gateway.config import Settings
from gateway.engine.contract import GenerationRequest
from tests.conftest import DemoDirs, RunningServer, image_bytes, record_submissions, start_server

GREEDY = {"temperature": 0, "max_tokens": 4}
RED, BLUE = image_bytes("JPEG", color=(220, 20, 20)), image_bytes("JPEG", color=(20, 20, 220))


@pytest.fixture(scope="module")
def live_server(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    """A server whose frame rate never drops a test's frames (the rate itself is live_window's unit tests'), and that
    never warms a live turn up nor encodes its frames ahead: these tests count what each turn submits and encodes
    (warm-ups are test_live_warm_up.py's, frames encoded ahead test_live_encode_ahead.py's)."""
    settings = Settings(max_frames_per_second=1000.0, max_live_sources=2, live_warm_up_frames=0, live_encode_ahead=False)
    running = start_server(demo_dirs.model, settings)
    yield running
    running.stop()


@pytest.fixture
def submitted(live_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> list[GenerationRequest]:
    """Every request the engine is handed during the test."""
    return record_submissions(live_server, monkeypatch)


async def stream(client: GatewayClient, frames: list[tuple[bytes, int]], source: str = "camera") -> None:
    """Send frames, then wait for a `pong`: frames get no reply, and the reader takes frames in order."""
    for image, ts in frames:
        await client.send({"type": "frame", "source": source, "image": image, "ts": ts})
    assert (await client.request({"type": "ping"}))["type"] == "pong"


def window_of(server: RunningServer, client: GatewayClient, source: str = "camera") -> Any:
    windows = server.app.state.ws.hub.live[client.ready["session"]].windows
    return windows.get(source)


async def test_a_live_turn_reads_the_window_and_history_keeps_its_summary(
    live_server: RunningServer, submitted: list[GenerationRequest]
) -> None:
    """The prompt reads the window's distinct frames (a repeat merged) before the text; `accepted` names them;
    the exchange keeps their summary and no pixels."""
    async with GatewayClient(live_server.ws_url) as client:
        await stream(client, [(RED, 1000), (RED, 1500), (BLUE, 2000)])
        result = await client.turn("t1", "what do you see?", live=True, **GREEDY)
        history = await client.request({"type": "history"})
        window = window_of(live_server, client)
    assert result.done and result.accepted and not result.errors
    assert result.accepted["live_frames"] == {"count": 2, "first_ts": 1000, "last_ts": 2000, "merged": 1, "still": False}
    prompt = submitted[0].messages[-1]
    assert prompt.text == "[camera, 1.000 s] [camera, 2.000 s]\nwhat do you see?" and len(prompt.images) == 2
    assert history["turns"][0]["text"] == "[live camera: 2 frames, 1.000 s to 2.000 s]\nwhat do you see?"
    assert history["turns"][0].get("images", []) == []
    assert (window.counters.accepted, window.counters.merged, window.counters.dropped) == (2, 1, 0)


async def test_a_still_scene_merges_and_costs_no_new_encoder_passes(live_server: RunningServer) -> None:
    """The same frame, sent again and again, stays one frame; the first live turn encodes it (one pass of the
    vision tower) and later ones show it no more (the first exchange shows it, held in KV): no encoder pass runs
    or needs the encoder cache, however many turns ask. `accepted.live_frames` says the scene is still."""
    encoder, meter = live_server.engine.encoder_cache, live_server.engine.encoder_meter
    async with GatewayClient(live_server.ws_url) as client:
        still = image_bytes("JPEG", color=(90, 140, 60), size=(80, 60))
        await stream(client, [(still, 100 * i) for i in range(4)])
        passes = meter.passes
        first = await client.turn("t1", "anything new?", live=True, **GREEDY)
        assert meter.passes == passes + 1
        later = []
        for n in range(2):
            await stream(client, [(still, 100 * i) for i in range(4 + 4 * n, 8 + 4 * n)])
            hits, encoded = encoder.hits, encoder.encoded
            later.append(await client.turn(f"t{n + 2}", "and now?", live=True, **GREEDY))
            assert (meter.passes, encoder.hits, encoder.encoded) == (passes + 1, hits, encoded)
        window = window_of(live_server, client)
    assert first.done and all(turn.done and turn.accepted for turn in later)
    assert [turn.accepted["live_frames"] for turn in later if turn.accepted] == [
        {"count": 1, "first_ts": 0, "last_ts": 700, "merged": 7, "still": True},
        {"count": 1, "first_ts": 0, "last_ts": 1100, "merged": 11, "still": True},
    ]
    assert len(window) == 1 and window.counters.merged == 11


async def test_a_live_turn_may_name_its_source_and_frame_count(live_server: RunningServer) -> None:
    """`live: {source, frames}` reads that source's latest frames only."""
    async with GatewayClient(live_server.ws_url) as client:
        await stream(client, [(RED, 10), (BLUE, 20)])
        await stream(client, [(RED, 30)], source="screen")
        latest = await client.turn("t1", "look", live={"source": "camera", "frames": 1}, **GREEDY)
        unnamed = await client.turn("t2", "look", live=True, **GREEDY)
    assert latest.accepted
    assert latest.accepted["live_frames"] == {"count": 1, "first_ts": 20, "last_ts": 20, "merged": 0, "still": False}
    assert [e["code"] for e in unnamed.errors] == ["not_found"]  # two sources: the turn must name one


async def test_bad_frames_and_empty_windows_are_errors_and_the_connection_goes_on(live_server: RunningServer) -> None:
    """A frame that is no image is `bad_image`; a source past max_live_sources `too_large`; a live turn with no
    frames `not_found`; none of them changes a window, and the session goes on."""
    async with GatewayClient(live_server.ws_url) as client:
        empty = await client.turn("t0", "look", live=True, **GREEDY)
        await client.send({"type": "frame", "source": "camera", "image": b"no image", "ts": 1, "id": "f1"})
        bad = await client.recv()
        await stream(client, [(RED, 1)], source="one")
        await stream(client, [(RED, 1)], source="two")
        await client.send({"type": "frame", "source": "three", "image": RED, "ts": 1, "id": "f2"})
        many = await client.recv()
        after = await client.turn("t1", "look", live={"source": "one"}, **GREEDY)
    assert [e["code"] for e in empty.errors] == ["not_found"] and empty.done is None
    assert (bad["type"], bad["code"], bad["id"]) == ("error", "bad_image", "f1")
    assert (many["code"], many["id"]) == ("too_large", "f2")
    assert after.done and after.accepted and after.accepted["live_frames"]["count"] == 1
