"""Abandoned work yields: turns nobody listens to give way to attached clients, and each client's
detached sessions are bounded by its own quota (real server, real clients from distinct loopback addresses)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, start_server, wait_until
from tests.e2e.test_sessions import Raw
from tests.loop_watch import watching

LONG = {"max_tokens": 1800, "ignore_eos": True, "temperature": 0}


class From(Raw):
    """A msgpack client whose socket is bound to a loopback address of its own (127.0.0.0/8 is all local)."""

    def __init__(self, url: str, address: str) -> None:
        super().__init__(url)
        self.address = address

    async def open(self) -> From:
        self.ws = await websockets.connect(
            self.url,
            subprotocols=["gateway.msgpack"],  # type: ignore[list-item]
            local_addr=(self.address, 0),
            max_size=1 << 26,
        )
        self.ready = await self.recv()
        return self


@pytest.fixture(scope="module")
def small(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    """Two turns decode at once and one may wait: a handful of abandoned turns fill it."""
    settings = Settings(max_batch=2, engine_queue_size=1, turns_per_minute=1e6, max_sessions_per_client=3)
    running = start_server(demo_dirs.model, settings)
    # A model that takes at least 5 ms a step, so an 1,800-token turn lasts 9 s however fast the machine:
    # the abandoned turns must still be running when the attached client comes.
    model = running.engine.loaded.model
    forward = model.forward

    def slow_forward(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.005)
        return forward(*args, **kwargs)

    model.forward = slow_forward
    yield running
    running.stop()


async def abandon(server: RunningServer, address: str, turn_id: str) -> dict[str, Any]:
    """Open a session from `address`, start a long turn, and vanish (no close frame)."""
    client = await From(server.ws_url, address).open()
    await client.send({"type": "turn", "id": turn_id, "text": "go on and on", "options": LONG})
    await client.until("accepted")
    client.abort()
    return client.ready


async def test_an_attached_turn_stops_the_oldest_abandoned_ones(small: RunningServer) -> None:
    """With every slot and the queue taken by turns whose clients vanished, a fresh client's turn is not
    refused: detached turns give way (when their client leaves while others wait, or when an attached turn
    needs the slot), and a stopped one's `done` replays as `cancelled`."""
    hub = small.app.state.ws.hub
    with watching(small.thread) as watch:
        abandoned = [await abandon(small, f"127.0.0.{n + 2}", f"a{n}") for n in range(3)]
        await wait_until(lambda: len(hub.detached) == 3, 30)
        fresh = await Raw(small.ws_url).open()
        await fresh.send({"type": "turn", "id": "mine", "text": "hello", "options": {"max_tokens": 4, "temperature": 0}})
        done = await fresh.until("done")
    watch.check()
    assert [f for f in fresh.frames if f["type"] == "error"] == []
    assert done["finish_reason"] in ("length", "stop")
    await fresh.close()
    # Unstopped, the three would still hold both slots and the queue (each lasts 9 s on this model): at most
    # one may have decoded beside the attached turn.
    sessions = [hub.live[ready["session"]] for ready in abandoned]
    assert sum(live.running is not None for live in sessions) <= 1
    assert small.app.state.runtime.metrics.preempted._value.get() >= 2

    await wait_until(lambda: any(live.active is None for live in sessions))
    stopped = next(ready for ready, live in zip(abandoned, sessions) if live.active is None)
    again = await Raw(small.ws_url).open()
    await again.send({"type": "resume", "id": "r", "session": stopped["session"], "token": stopped["resume_token"]})
    replayed_done = await again.until("done")
    assert replayed_done["finish_reason"] == "cancelled"
    await again.close()


async def test_a_client_cannot_pile_up_detached_sessions(small: RunningServer) -> None:
    """Connect-and-vanish from one address keeps at most `max_sessions_per_client` of its sessions in
    memory (the oldest detached go first, to the store); other addresses' sessions are untouched."""
    hub = small.app.state.ws.hub
    other = await From(small.ws_url, "127.0.0.20").open()
    with watching(small.thread) as watch:
        for _ in range(8):
            client = await From(small.ws_url, "127.0.0.21").open()
            client.abort()
    watch.check()
    await wait_until(lambda: len([s for s in hub.live.values() if s.client == "127.0.0.21"]) <= 3)
    assert hub.quota.count("127.0.0.21") <= 3
    assert other.ready["session"] in hub.live
    await other.send({"type": "ping", "id": "p"})
    assert (await other.until("pong"))["id"] == "p"
    await other.close()


async def test_a_client_at_its_quota_can_reconnect_and_resume(small: RunningServer) -> None:
    """Three detached sessions at a quota of three: a new connection from the same address resumes the
    oldest of them live (its fresh session unloads nothing), with no gap in its frames."""
    hub = small.app.state.ws.hub
    left = []
    for _ in range(3):
        client = await From(small.ws_url, "127.0.0.30").open()
        await client.send({"type": "turn", "id": "t", "text": "hi", "options": {"max_tokens": 2, "temperature": 0}})
        await client.until("done")
        await client.close()
        left.append(client.ready)
    await wait_until(lambda: len([s for s in hub.live.values() if s.client == "127.0.0.30" and s.attached is None]) == 3)
    again = await From(small.ws_url, "127.0.0.30").open()
    oldest = left[0]
    await again.send({"type": "resume", "id": "r", "session": oldest["session"], "token": oldest["resume_token"], "last_seq": 1})
    resumed = await again.until("resumed")
    assert resumed["gap"] is False and resumed["replayed"] > 0
    await again.close()
