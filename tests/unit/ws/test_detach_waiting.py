"""A session whose connection goes has its turn stopped then only when another turn waits for a slot: a
turn still queued is not counted as waiting for itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.config import Settings
from gateway.core.request import TurnRequest
from gateway.core.store.memory import MemoryStore
from gateway.core.turns import TurnService
from gateway.engine.contract import EngineLoad, GenerationRequest, TurnHandle, TurnSink
from gateway.engine.scripted import ScriptedEngine
from gateway.metrics import Metrics
from gateway.ws.detached import others_waiting
from gateway.ws.hub import SessionHub
from gateway.ws.live_session import LiveSession


class Line(ScriptedEngine):
    """An engine with one slot whose turns never advance: the first submitted is admitted, the rest wait in
    line until `admit_next`, as the local engine's generation thread takes them."""

    def __init__(self) -> None:
        super().__init__(queue_size=8)
        self.batch: list[GenerationRequest] = []
        self.line: list[GenerationRequest] = []

    def load(self) -> EngineLoad:
        return EngineLoad(active=len(self.batch), waiting=len(self.line), capacity=1)

    def submit(self, request: GenerationRequest, sink: TurnSink) -> TurnHandle:
        self.line.append(request)
        if not self.batch:
            self.admit_next()
        return request.handle

    def admit_next(self) -> None:
        self.batch = [self.line.pop(0)]
        self.batch[0].handle.admitted.set()


class Socket:
    def taken_over(self) -> None: ...


def ignored(event: Any) -> None:
    """A listener that ignores a turn's events."""


@pytest.fixture
async def hub() -> AsyncIterator[SessionHub]:
    settings = Settings(engine="scripted", session_store="memory", session_grace_s=60.0, turns_per_minute=1e6)
    turns = TurnService(settings, Line(), Metrics())
    hub = SessionHub(settings, turns, MemoryStore())
    yield hub
    await hub.close()
    turns.close()


async def attached_turn(hub: SessionHub, client: str) -> tuple[LiveSession, Socket]:
    """A session of `client` attached to a socket, its turn submitted (admitted or waiting, as the engine has room)."""
    live, socket = hub.create("", client), Socket()
    hub.attach(live, socket, client)
    quota = hub.turns.grammars.quota(client)
    live.active = await hub.turns.start(live.session, TurnRequest("t", "hi"), ignored, quota, hub.keeper(live))
    return live, socket


def preempted(hub: SessionHub) -> float:
    return float(hub.turns.metrics.preempted._value.get())


async def test_a_queued_turn_whose_client_leaves_with_nobody_else_waiting_is_not_stopped(hub: SessionHub) -> None:
    """One turn in the slot, the leaving session's own waiting next: the engine counts one waiting, which is
    the leaving turn itself, so it stays queued and runs when the slot frees."""
    await attached_turn(hub, "a")
    leaving, socket = await attached_turn(hub, "b")
    assert hub.turns.engine.load().waiting == 1 and leaving.active is not None
    hub.detach(leaving, socket)
    assert not leaving.active.handle.cancelled.is_set() and not leaving.yielding
    assert preempted(hub) == 0


async def test_a_running_turn_whose_client_leaves_while_another_waits_is_stopped(hub: SessionHub) -> None:
    """The leaving session's turn holds the slot and another session's waits: it yields at once."""
    leaving, socket = await attached_turn(hub, "a")
    await attached_turn(hub, "b")
    hub.detach(leaving, socket)
    assert leaving.active is not None and leaving.active.handle.cancelled.is_set() and leaving.yielding
    assert preempted(hub) == 1


async def test_a_queued_turn_whose_client_leaves_behind_another_waiting_one_is_stopped(hub: SessionHub) -> None:
    """Two waiting, one of them the leaving session's: another still waits, so it is stopped."""
    await attached_turn(hub, "a")
    await attached_turn(hub, "b")
    leaving, socket = await attached_turn(hub, "c")
    hub.detach(leaving, socket)
    assert leaving.active is not None and leaving.active.handle.cancelled.is_set()
    assert preempted(hub) == 1


def test_a_turn_admitted_while_the_load_is_read_is_not_counted_twice() -> None:
    """The engine admits the turn between its `admitted` flag's reading and its load's: the load is read
    again, so the answer is of one moment (nobody else waits), never minus one nor the turn itself."""
    handle = TurnHandle()
    reads: list[int] = []

    def load() -> EngineLoad:
        reads.append(0 if handle.admitted.is_set() else 1)  # the line counts it until it is admitted
        waiting = reads[-1]
        handle.admitted.set()  # admitted on the engine's thread, right after this reading
        return EngineLoad(active=1 - waiting, waiting=waiting, capacity=1)

    assert others_waiting(load, handle) == 0
    assert reads == [1, 0]
