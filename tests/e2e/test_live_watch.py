"""End to end: `watch` runs live turns on the server's own while new frames arrive, marked `initiated`, yielding to the client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.client import GatewayClient
from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, image_bytes, start_server

EVERY_S = 0.2
RED, BLUE = image_bytes("JPEG", color=(220, 20, 20)), image_bytes("JPEG", color=(20, 20, 220))


@pytest.fixture(scope="module")
def watch_server(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, Settings(max_frames_per_second=1000.0, min_watch_every_s=EVERY_S))
    yield running
    running.stop()


async def send_frame(client: GatewayClient, image: bytes, ts: int) -> None:
    await client.send({"type": "frame", "source": "camera", "image": image, "ts": ts})


async def until(client: GatewayClient, kind: str, turn_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Frames up to this turn's frame of that kind: (that frame, every frame before it)."""
    seen: list[dict[str, Any]] = []
    while True:
        frame = await client.recv()
        if frame["type"] == kind and frame.get("id") == turn_id:
            return frame, seen
        if frame["type"] == "error":  # an answer that would otherwise leave this loop waiting for ever
            raise AssertionError(f"waiting for {kind} of {turn_id}, got {frame}")
        seen.append(frame)


async def test_a_watch_asks_when_frames_change_and_skips_a_still_window(watch_server: RunningServer) -> None:
    """Each change of the window gets one watch turn (accepted, tokens, done, marked initiated: watch); ticks
    with no new distinct frame run none."""
    async with GatewayClient(watch_server.ws_url) as client:
        await send_frame(client, RED, 100)
        await client.send({"type": "watch", "source": "camera", "every_s": EVERY_S, "text": "what changed?", "max_tokens": 3})
        accepted, _ = await until(client, "accepted", "watch-1")
        done, _ = await until(client, "done", "watch-1")
        await send_frame(client, RED, 200)  # merged: the window did not change
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(until(client, "accepted", "watch-2"), timeout=6 * EVERY_S)
        await send_frame(client, BLUE, 300)
        second, _ = await until(client, "accepted", "watch-2")
        await until(client, "done", "watch-2")
        history = await client.request({"type": "history"})
    assert accepted["initiated"] == "watch" and done["initiated"] == "watch"
    assert accepted["live_frames"] == {"count": 1, "first_ts": 100, "last_ts": 100, "merged": 0, "still": False}
    assert second["live_frames"] == {"count": 2, "first_ts": 100, "last_ts": 300, "merged": 1, "still": False}
    assert [t["text"].splitlines()[-1] for t in history["turns"] if t["role"] == "user"] == ["what changed?"] * 2


async def test_a_client_turn_cancels_a_running_watch_turn_and_runs(watch_server: RunningServer) -> None:
    """A client's turn while a watch turn generates: the watch turn ends `cancelled` first, then the client's
    turn is accepted and runs (never `busy`)."""
    async with GatewayClient(watch_server.ws_url) as client:
        await client.request({"type": "configure", "ignore_eos": True})
        await send_frame(client, RED, 100)
        await client.send({"type": "watch", "source": "camera", "every_s": EVERY_S, "text": "describe", "max_tokens": 400})
        await until(client, "token", "watch-1")
        await client.send({"type": "unwatch"})
        await client.start_turn("mine", "and what about this?", max_tokens=3, temperature=0)
        done, before = await until(client, "done", "mine")
    kinds = [(f["type"], f.get("id")) for f in before if f["type"] != "token"]
    assert kinds == [("done", "watch-1"), ("accepted", "mine")]
    assert before[[f["type"] for f in before].index("done")]["finish_reason"] == "cancelled"
    assert done["finish_reason"] == "length" and done["initiated"] is None


async def test_watch_refusals_are_errors_and_unwatch_stops_it(watch_server: RunningServer) -> None:
    """An interval under min_watch_every_s is `invalid_field`; `unwatch` without a watch is `not_found`."""
    async with GatewayClient(watch_server.ws_url) as client:
        fast = await client.request({"type": "watch", "source": "camera", "every_s": EVERY_S / 2, "text": "x", "id": "w"})
        none = await client.request({"type": "unwatch", "id": "u"})
    assert (fast["code"], fast["id"]) == ("invalid_field", "w") and (none["code"], none["id"]) == ("not_found", "u")
