"""Turn admission without a server: a detached turn yields only for a slot nobody else frees, and image
room is taken before the awaits of planning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config import Settings
from gateway.detached import DetachedSessions
from gateway.engine.scripted import ScriptedEngine
from gateway.engine.types import ChatMessage, EngineLoad, GenerationRequest, TurnHandle, TurnSink
from gateway.metrics import Metrics
from gateway.turns import TurnService
from tests.test_quota import Fake


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


@dataclass
class Ignored:
    def on_queued(self, position: int) -> None: ...
    def on_token(self, text: str) -> None: ...
    def on_done(self, result: Any) -> None: ...
    def on_tool_call(self, call: Any) -> None: ...


async def submit(turns: TurnService) -> TurnHandle:
    params, _ = turns.resolve(turns.server_defaults, None)
    return await turns.start_stateless([ChatMessage(role="user", text="hi")], params, None, Ignored())


def service(capacity: int) -> tuple[TurnService, HeldEngine, DetachedSessions[Fake]]:
    engine = HeldEngine(capacity)
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
    assert abandoned.handle.cancelled.is_set() and detached.stopping == 1
    turns.close()
