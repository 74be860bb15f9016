"""End to end on the demo engine: a live session's next turn is prefilled ahead as frames arrive (its history and
the window, without the question), so the question prefills only its text and replies as it would cold."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gateway.client import GatewayClient
from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, image_bytes, record_submissions, start_server, wait_until
from tests.e2e.test_live_window_ws import GREEDY, stream

COLORS = ((220, 20, 20), (20, 20, 220), (20, 200, 20), (230, 230, 30), (30, 230, 230), (200, 30, 200))
FRAMES = [image_bytes("JPEG", color=color, size=(80, 60)) for color in COLORS]


def serve(demo_dirs: DemoDirs, warm_up_frames: int) -> RunningServer:
    settings = Settings(max_frames_per_second=1000.0, live_warm_up_frames=warm_up_frames, live_warm_up_max_busy=1.0)
    return start_server(demo_dirs.model, settings)


@pytest.fixture(scope="module")
def servers(demo_dirs: DemoDirs) -> Iterator[tuple[RunningServer, RunningServer]]:
    """One server that warms live turns up after 3 new frames, one that never does; however busy the engine was
    of late (that bound is tests/unit/core/test_warm_ups.py's: these tests keep it busy)."""
    warming, cold = serve(demo_dirs, 3), serve(demo_dirs, 0)
    yield warming, cold
    warming.stop()
    cold.stop()


def warm_ups(server: RunningServer) -> tuple[float, float, float]:
    """Live warm-ups prefilled to the end, dropped, and started ahead of a question due on its session's clock."""
    body = requests.get(f"{server.http_url}/metrics", timeout=10).text
    values = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}
    names = ("gateway_live_warm_ups_total", "gateway_live_warm_ups_dropped_total", "gateway_live_warm_ups_expected_total")
    prefilled, dropped, expected = (values[name] for name in names)
    return prefilled, dropped, expected


async def conversation(server: RunningServer, warms: bool) -> tuple[Any, Any]:
    """A text exchange, a live turn over 2 frames, 3 new frames (the warming server warms up on the third), then
    a live question over all 5: the first live turn's result and the question's."""
    async with GatewayClient(server.ws_url) as client:
        await client.turn("t1", "hello there", **GREEDY)
        await stream(client, [(FRAMES[0], 100), (FRAMES[1], 200)])
        first = await client.turn("l1", "what is it?", live=True, **GREEDY)
        before = warm_ups(server)
        await stream(client, [(FRAMES[2], 300), (FRAMES[3], 400), (FRAMES[4], 500)])
        if warms:
            await wait_until(lambda: warm_ups(server)[0] > before[0])
        question = await client.turn("l2", "and now?", live=True, **GREEDY)
    return first, question


async def test_a_warmed_up_question_prefills_only_its_text_and_replies_as_cold(
    servers: tuple[RunningServer, RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warm-up's prompt is the question's up to its text (the same messages, the last one's frames, its text
    the question's first characters); the question then reuses all of it and its greedy reply is the one a server
    that never warms up gives, where the question prefills its 3 new frames too."""
    warming, cold = servers
    seen = record_submissions(warming, monkeypatch)
    _, question = await conversation(warming, True)
    _, alone = await conversation(cold, False)
    assert question.text == alone.text and question.done and alone.done
    (ahead,) = [request for request in seen if request.warm_up]
    asked = seen[-1]
    assert not asked.warm_up and ahead.messages[:-1] == asked.messages[:-1]
    last, asked_last = ahead.messages[-1], asked.messages[-1]
    assert last.images == asked_last.images and len(last.images) == 3
    assert asked_last.text.startswith(last.text) and asked_last.text.endswith("and now?")
    prefilled = question.done["usage"]["prompt_tokens"] - question.done["usage"]["cached_tokens"]
    cold_prefilled = alone.done["usage"]["prompt_tokens"] - alone.done["usage"]["cached_tokens"]
    assert prefilled <= 12 < cold_prefilled  # its text and the turn's closing, against 3 frames and markers more


async def test_no_warm_up_is_planned_while_the_engine_is_busy(
    servers: tuple[RunningServer, RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another session's turn holds the engine, new frames start no warm-up (it would wait, its planning
    spent, until the session's own turn cancelled it); the first frame after that turn ends starts one."""
    warming, _ = servers
    seen = record_submissions(warming, monkeypatch)
    async with GatewayClient(warming.ws_url) as client, GatewayClient(warming.ws_url) as other:
        await stream(client, [(FRAMES[0], 100)])
        await client.turn("l1", "what is it?", live=True, **GREEDY)
        before = warm_ups(warming)
        busy = asyncio.ensure_future(other.turn("o1", "a long answer please", temperature=0, max_tokens=64, ignore_eos=True))
        await wait_until(lambda: warming.engine.load().active > 0)
        await stream(client, [(FRAMES[2], 300), (FRAMES[3], 400), (FRAMES[5], 500)])
        assert not busy.done() and not any(request.warm_up for request in seen)
        await busy
        await stream(client, [(FRAMES[1], 600)])
        await wait_until(lambda: warm_ups(warming)[0] > before[0])
    assert [request.warm_up for request in seen].count(True) == 1
