"""A client that vanishes while its turn waits in line keeps that turn unless another turn waits too (real
server with one batch slot, real clients; the model is held at its next forward pass while the line is set up)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.config import Settings
from gateway.ws.live_session import LiveSession
from tests.conftest import DemoDirs, RunningServer, start_server, wait_until
from tests.e2e.test_sessions import Raw

LONG = {"max_tokens": 1800, "ignore_eos": True, "temperature": 0}
SHORT = {"max_tokens": 4, "ignore_eos": True, "temperature": 0}


class Held:
    """The server with one batch slot, and a gate its model's forward pass waits on (open unless a test holds it)."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.gate = threading.Event()
        self.gate.set()
        model = server.engine.loaded.model
        forward = model.forward

        def gated_forward(*args: Any, **kwargs: Any) -> Any:
            self.gate.wait()
            return forward(*args, **kwargs)

        model.forward = gated_forward

    def live(self, client: Raw) -> LiveSession:
        session: LiveSession = self.server.app.state.ws.hub.live[client.ready["session"]]
        return session

    def preempted(self) -> float:
        return float(self.server.app.state.runtime.metrics.preempted._value.get())

    async def holding_the_slot(self) -> Raw:
        """A client whose long turn has the batch's one slot, the model held so that it cannot end."""
        self.gate.clear()
        holder = await Raw(self.server.ws_url).open()
        await holder.send({"type": "turn", "id": "long", "text": "go on and on", "options": LONG})
        await holder.until("accepted")
        await wait_until(lambda: self.server.engine.load().active == 1 and self.server.engine.load().waiting == 0)
        return holder

    async def queued(self, turn_id: str) -> Raw:
        """A client whose short turn waits in line (not admitted: the slot is held)."""
        client = await Raw(self.server.ws_url).open()
        await client.send({"type": "turn", "id": turn_id, "text": "hi", "options": SHORT})
        await client.until("accepted")
        started = self.live(client).active
        assert started is not None and not started.handle.admitted.is_set()
        return client

    async def vanish(self, client: Raw) -> LiveSession:
        """The client drops its connection; returns its session once the server's detach has run to its end
        (the grace period's timer is its last step)."""
        live = self.live(client)
        client.abort()
        await wait_until(lambda: live.attached is None and live.expiry is not None)
        return live

    async def release(self, holder: Raw) -> None:
        """The model goes on and the holder gives its slot up."""
        self.gate.set()
        await holder.send({"type": "cancel", "id": "long"})
        assert (await holder.until("done"))["finish_reason"] == "cancelled"
        await holder.close()

    async def replayed_done(self, client: Raw) -> dict[str, Any]:
        """The vanished client's turn's `done`, as a resume replays it once the turn has ended."""
        again = await Raw(self.server.ws_url).open()
        await again.send({"type": "resume", "id": "r", "session": client.ready["session"], "token": client.ready["resume_token"]})
        done = await again.until("done")
        await again.close()
        return done


@pytest.fixture(scope="module")
def held(demo_dirs: DemoDirs) -> Iterator[Held]:
    settings = Settings(max_batch=1, engine_queue_size=4, turns_per_minute=1e6, frames_per_second=1e6)
    running = start_server(demo_dirs.model, settings)
    held = Held(running)
    yield held
    held.gate.set()
    running.stop()


async def test_a_queued_turn_whose_client_vanishes_with_nobody_else_waiting_runs(held: Held) -> None:
    """One slot held, the vanishing client's turn alone in line: it is not cancelled for itself; once the
    slot frees it runs to its length, and a resume replays that `done`."""
    before = held.preempted()
    holder = await held.holding_the_slot()
    client = await held.queued("mine")
    live = await held.vanish(client)
    assert live.active is not None and not live.active.handle.cancelled.is_set() and not live.yielding
    assert held.preempted() == before
    await held.release(holder)
    assert (await held.replayed_done(client))["finish_reason"] == "length"


async def test_a_queued_turn_whose_client_vanishes_while_another_waits_yields(held: Held) -> None:
    """One slot held, an attached client's turn waiting and the vanishing client's behind it: the vanishing
    one is cancelled as its client goes, and a resume replays `done` with `cancelled`."""
    before = held.preempted()
    holder = await held.holding_the_slot()
    waiting = await held.queued("first")
    client = await held.queued("mine")
    live = await held.vanish(client)
    assert live.active is not None and live.active.handle.cancelled.is_set()
    assert held.preempted() == before + 1
    await held.release(holder)
    assert (await waiting.until("done"))["finish_reason"] == "length"
    await waiting.close()
    assert (await held.replayed_done(client))["finish_reason"] == "cancelled"
