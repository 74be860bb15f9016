"""Turn admission without a server: a detached turn yields only for a slot nobody else frees, and image
room is taken before the awaits of planning."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from gateway.config import Settings
from gateway.core.image_ledger import ImageLedger
from gateway.core.request import ConversationRequest, RequestMessage, TurnRequest
from gateway.core.session import Session
from gateway.core.stateless import start_conversation
from gateway.core.store.memory import MemoryStore
from gateway.core.turns import TurnService
from gateway.engine.contract import ChatImage, EngineLoad, GenerationRequest, TurnHandle, TurnSink
from gateway.engine.scripted import ScriptedEngine
from gateway.errors import ErrorCode, GatewayError, RetryLater
from gateway.metrics import Metrics
from gateway.ws.detached import DetachedSessions
from gateway.ws.hub import SessionHub
from gateway.ws.live_session import LiveSession
from tests.conftest import wait_until
from tests.e2e.test_image_budget import noise_png
from tests.unit.edge.test_quota import Fake


class HeldEngine(ScriptedEngine):
    """An engine whose turns never advance: each submitted one holds a slot, cancelled or not, as a real
    engine's do until its next step."""

    def __init__(self, capacity: int) -> None:
        super().__init__(queue_size=capacity)
        self.submitted: list[GenerationRequest] = []

    def load(self) -> EngineLoad:
        return EngineLoad(active=len(self.submitted), waiting=0, capacity=self.queue_size)

    def submit(self, request: GenerationRequest, sink: TurnSink) -> TurnHandle:
        self.submitted.append(request)
        return request.handle


def ignored(event: Any) -> None:
    """A listener that ignores a turn's events."""


class Keeper:
    """A session holder that keeps nothing durable."""

    def turn_ended(self, started: Any, result: Any) -> bool:
        return True

    async def persist(self, started: Any) -> None:
        pass


async def submit(turns: TurnService) -> TurnHandle:
    request = ConversationRequest([RequestMessage("user", "hi")])
    return await start_conversation(turns, request, ignored, turns.grammars.quota("a"))


def service(capacity: int, engine: HeldEngine | None = None) -> tuple[TurnService, HeldEngine, DetachedSessions[Fake]]:
    engine = engine or HeldEngine(capacity)
    turns = TurnService(Settings(engine="scripted"), engine, Metrics())
    detached: DetachedSessions[Fake] = DetachedSessions()
    turns.make_room = detached.make_room
    return turns, engine, detached


async def test_a_turn_cancelled_by_its_client_frees_the_slot_a_detached_turn_would_yield() -> None:
    """Both slots held, one by an attached turn its client just cancelled: the next attached turn takes
    that slot, and the detached turn runs on; with nothing cancelled it yields."""
    turns, _, detached = service(capacity=2)
    attached = await submit(turns)
    abandoned = Fake("d", handle=await submit(turns))
    detached.add(abandoned)
    attached.cancel()
    await submit(turns)
    assert abandoned.handle is not None and not abandoned.handle.cancelled.is_set()
    await submit(turns)  # now every slot is held by a turn nobody cancelled
    assert abandoned.handle.cancelled.is_set() and abandoned.yielding
    turns.close()


class DroppingEngine(HeldEngine):
    """A held engine whose load no longer counts a cancelled turn: its step has dropped it, and the turn's
    end has not reached the event loop yet."""

    def load(self) -> EngineLoad:
        live = [request for request in self.submitted if not request.handle.cancelled.is_set()]
        return EngineLoad(active=len(live), waiting=0, capacity=self.queue_size)


async def test_a_detached_turn_stopped_while_it_waited_frees_no_slot_for_the_next_one() -> None:
    """Both slots held by detached turns and a third detached one stopped while it waited (dropped by the
    engine, its end not yet here): an attached turn still stops the oldest running one, never waiting behind it."""
    turns, _, detached = service(capacity=2, engine=DroppingEngine(2))
    sessions = [Fake(f"d{n}", handle=await submit(turns)) for n in range(3)]
    for session in sessions:
        detached.add(session)
    assert detached.stop(sessions[2])  # as a session detaching while others wait
    await submit(turns)
    assert [s.handle is not None and s.handle.cancelled.is_set() for s in sessions] == [True, False, True]
    turns.close()


class Connection:
    def taken_over(self) -> None: ...


def hub_with_images(max_bytes: int) -> tuple[SessionHub, ImageLedger]:
    settings = Settings(engine="scripted", max_total_image_bytes=max_bytes, image_cache_bytes=0, session_store="memory")
    turns = TurnService(settings, HeldEngine(capacity=4), Metrics())
    return SessionHub(settings, turns, MemoryStore()), turns.images


def holding(hub: SessionHub, nbytes: int, client: str, detached: bool) -> LiveSession:
    live = hub.create("", client)
    connection = Connection()
    hub.attach(live, connection, client)
    hub.turns.images.hold(live.id, nbytes)
    if detached:
        hub.detach(live, connection)
    return live


async def test_detached_sessions_are_unloaded_for_images_only_when_that_makes_enough_room() -> None:
    """6,000 of 8,000 bytes held (5,000 attached, 1,000 detached): a session needing 4,000 is refused with
    the detached session kept; one needing 3,000 gets it by unloading the detached session."""
    hub, ledger = hub_with_images(8000)
    holding(hub, 5000, "a", detached=False)
    left = holding(hub, 1000, "b", detached=True)
    newcomer = holding(hub, 0, "c", detached=False)
    assert hub.free_images(newcomer.id, 4000) == 2000
    assert left.id in hub.live and ledger.held(left.id) == 1000
    assert hub.free_images(newcomer.id, 3000) == 3000
    assert left.id not in hub.live
    hub.turns.close()


class SlowPlanning(HeldEngine):
    """Planning waits until released, so two turns can be checked while both plan."""

    def __init__(self) -> None:
        super().__init__(capacity=4)
        self.release = asyncio.Event()

    async def prepare(self, images: Sequence[ChatImage]) -> None:
        await self.release.wait()


async def test_image_room_is_reserved_before_planning() -> None:
    """Room for one turn's image: while it plans, a second session's image turn is `overloaded`, and the
    ledger never holds more than its bound."""
    image = noise_png(1)
    engine = SlowPlanning()
    settings = Settings(engine="scripted", max_total_image_bytes=int(1.5 * len(image)), image_cache_bytes=0)
    turns = TurnService(settings, engine, Metrics())
    quota = turns.grammars.quota("a")
    first = asyncio.create_task(turns.start(Session(8), TurnRequest("t1", "look", [image]), ignored, quota, Keeper()))
    await wait_until(lambda: turns.images.total > 0)
    with pytest.raises(RetryLater) as refused:
        await turns.start(Session(8), TurnRequest("t2", "look", [image]), ignored, quota, Keeper())
    assert refused.value.code is ErrorCode.OVERLOADED
    engine.release.set()
    await first
    assert turns.images.total == len(image) <= turns.images.max_bytes
    turns.close()


async def test_a_turn_that_fails_while_planning_gives_its_image_room_back() -> None:
    """A turn refused after its room was reserved (the server began draining) leaves the ledger as it was."""
    image = noise_png(2)
    engine = SlowPlanning()
    turns = TurnService(Settings(engine="scripted", image_cache_bytes=0), engine, Metrics())
    quota = turns.grammars.quota("a")
    started = asyncio.create_task(turns.start(Session(8), TurnRequest("t", "look", [image]), ignored, quota, Keeper()))
    await wait_until(lambda: turns.images.total > 0)
    turns.drain.on = True
    engine.release.set()
    with pytest.raises(GatewayError):
        await started
    assert turns.images.total == 0
    turns.close()
