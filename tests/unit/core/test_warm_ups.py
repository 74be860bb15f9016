"""Warm-ups planned by the turn service's side: the prompt a live turn with no text would have, the session unchanged;
planned only on an idle engine; cancelled by the session's own turn until the engine takes them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.config import Settings
from gateway.core.frames_ahead import FramesAhead
from gateway.core.session import Session
from gateway.core.warm_ups import WarmUps
from gateway.engine.contract import ChatImage, ChatMessage, EngineLoad, GenerationRequest, TurnHandle, TurnSink
from gateway.metrics import LiveFrameCounters
from tests.unit.core.test_live_timeline import count, live_turn, view
from tests.unit.engine.test_prefix_cache import engines

__all__ = ["engines"]


class Holding:
    """An engine that takes warm-ups and holds them, never running one: what `submit` was handed."""

    warms_up, reads_video, context_tokens = True, False, 10_000

    def __init__(self) -> None:
        self.submitted: list[GenerationRequest] = []
        self.active = 0
        self.busy_s = 0.0  # the generation thread's time in phases other than waiting, so far

    def load(self) -> EngineLoad:
        return EngineLoad(active=self.active, waiting=0, capacity=4, phase_seconds={"decode": self.busy_s, "waiting": 0.0})

    async def prepare(self, images: Sequence[ChatImage]) -> None:
        pass

    async def count_prompt_tokens(self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] = ()) -> int:
        return await count(list(messages))

    def submit(self, request: GenerationRequest, sink: TurnSink) -> TurnHandle:
        self.submitted.append(request)
        return request.handle


def warm_ups(engine: Holding) -> tuple[WarmUps, LiveFrameCounters]:
    counters = LiveFrameCounters(CollectorRegistry())
    ahead = FramesAhead(engine, 4, 1)  # type: ignore[arg-type]
    defaults: Any = lambda options: (4, None, ())  # noqa: E731 (max_tokens, adapter, tools)
    return WarmUps(engine, Settings(live_warm_up_frames=3), counters, ahead, defaults), counters  # type: ignore[arg-type]


def value(counter: Any) -> float:
    return float(counter._value.get())


async def test_a_warm_up_is_the_next_live_turns_prompt_without_its_text_and_changes_nothing(engines: Any) -> None:
    """After a live exchange over frames 0-1, a warm-up over 0-3 is the prompt the next live turn gets, up to its
    text (the same messages, the last one's new frames 2-3, its markers): and the session's timeline is as it was,
    so that turn's own plan is unchanged by it."""
    warm, _ = engines
    session = Session(max_history_turns=16)
    await live_turn(warm, session, "l1", view(0, 1))
    engine = Holding()
    ups, _ = warm_ups(engine)
    assert ups.due(session, 3) and not ups.due(session, 2)
    ups.start(session, view(0, 1, 2, 3))
    await asyncio.wait_for(_submitted(engine), 10)
    (ahead,) = engine.submitted
    assert ahead.warm_up and ahead.params.max_tokens == 1 and ahead.affinity == session.id and session.id in ups
    asked, _ = await live_turn(warm, session, "l2", view(0, 1, 2, 3))
    assert ahead.messages[:-1] == asked[:-1] and ahead.messages[-1].images == asked[-1].images
    assert len(asked[-1].images) == 2 and asked[-1].text.startswith(ahead.messages[-1].text)


async def test_only_an_idle_engine_gets_one_and_the_sessions_turn_cancels_one_not_taken() -> None:
    """No warm-up is due while the engine has a turn; the session's own turn cancels one the engine has not taken
    (counted dropped), and leaves one it has: that one prefills what the turn reads."""
    engine = Holding()
    ups, counters = warm_ups(engine)
    session = Session(max_history_turns=16)
    engine.active = 1
    assert not ups.due(session, 5)
    engine.active = 0
    ups.start(session, view(0, 1, 2))
    await asyncio.wait_for(_submitted(engine), 10)
    taken = engine.submitted[0].handle
    taken.admitted.set()
    ups.cancel(session.id)
    assert not taken.cancelled.is_set() and session.id in ups
    ups.close()
    await asyncio.wait_for(_gone(ups, session.id), 10)
    ups.start(session, view(0, 1, 2))
    await asyncio.wait_for(_submitted(engine, 2), 10)
    waiting = engine.submitted[1].handle
    ups.cancel(session.id)
    await asyncio.wait_for(_gone(ups, session.id), 10)
    assert waiting.cancelled.is_set() and session.id not in ups and value(counters.warm_ups_dropped) == 2


async def _submitted(engine: Holding, n: int = 1) -> None:
    while len(engine.submitted) < n:
        await asyncio.sleep(0.01)


async def _gone(ups: WarmUps, session_id: str) -> None:
    while session_id in ups:
        await asyncio.sleep(0.01)


async def test_no_warm_up_is_due_while_the_engine_was_busy_of_late(monkeypatch: Any) -> None:
    """The engine's busy share over the last whole window (2 s) must be at most live_warm_up_max_busy (0.3): at
    1.5 s busy in 2 s none is due, at 0.4 s one is again."""
    engine = Holding()
    ups, _ = warm_ups(engine)
    clock = [100.0]
    monkeypatch.setattr("gateway.core.warm_ups.time.monotonic", lambda: clock[0])
    s = Session(max_history_turns=16)
    assert ups.due(s, 3)  # the window starts: idle until measured
    clock[0], engine.busy_s = 102.0, 1.5
    assert not ups.due(s, 3) and ups.busy_share == 0.75
    clock[0], engine.busy_s = 103.0, 1.9
    assert not ups.due(s, 3)  # within the window: the last whole one's share holds
    clock[0], engine.busy_s = 104.0, 1.9
    assert ups.due(s, 3) and ups.busy_share == pytest.approx(0.2)
