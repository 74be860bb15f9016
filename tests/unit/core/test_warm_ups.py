"""Warm-ups planned by the turn service's side: the prompt a live turn with no text would have, the session unchanged;
planned only on an idle engine; cancelled by the session's own turn until the engine takes them."""

from __future__ import annotations

import asyncio
import time
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
    ups.forget(session.id)  # the session goes: its warm-up with it
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


def expecting_ups(engine: Holding, lead_s: float) -> tuple[WarmUps, LiveFrameCounters]:
    """Warm-ups after every new frame, and `lead_s` ahead of a question due on the session's clock."""
    counters = LiveFrameCounters(CollectorRegistry())
    ahead = FramesAhead(engine, 4, 1)  # type: ignore[arg-type]
    defaults: Any = lambda options: (4, None, ())  # noqa: E731 (max_tokens, adapter, tools)
    settings = Settings(live_warm_up_frames=1, live_warm_up_lead_s=lead_s)
    return WarmUps(engine, settings, counters, ahead, defaults), counters  # type: ignore[arg-type]


def on_a_clock(session: Session, gap_s: float) -> None:
    """Three live questions `gap_s` apart, the last `gap_s` ago: `expect`, called now, makes four."""
    now_s = time.monotonic()
    for n in (3, 2, 1):
        session.live_cadence.asked(now_s - n * gap_s)


async def test_a_question_due_on_the_sessions_clock_is_warmed_up_ahead_however_busy_the_engine() -> None:
    """Questions 1 s apart: the next is due 1 s after this one, and `lead` (0.2 s) before it the frames the window
    gathered meanwhile are warmed up, with a turn on the engine and the engine busy all of late, where a new frame
    starts none (`due`) until the question is that close."""
    engine = Holding()
    engine.active, engine.busy_s = 1, 1e6
    ups, counters = expecting_ups(engine, 0.2)
    session = Session(max_history_turns=16)
    on_a_clock(session, 1.0)
    asked_s = time.monotonic()
    ups.expect(session, lambda: view(0, 1, 2))
    assert not ups.due(session, 3) and not engine.submitted  # not yet within the lead of the next question
    await asyncio.wait_for(_submitted(engine), 10)
    assert time.monotonic() - asked_s >= 0.8 - 0.05  # a timer fires no sooner than asked (the loop's clock's grain)
    (ahead,) = engine.submitted
    assert ahead.warm_up and len(ahead.messages[-1].images) == 3 and value(counters.warm_ups_expected) == 1
    ups.close()


async def test_while_the_session_has_a_turn_of_its_own_it_looks_again_until_the_lead_after_the_question_is_due() -> None:
    """`unread` gives nothing while the session's own turn runs (or nothing is new): it is asked again every quarter
    of the lead, and a view it gives later is warmed up; one that never gives one stops being asked the lead after
    the question is due (a clock's ticks wander)."""
    engine = Holding()
    ups, counters = expecting_ups(engine, 0.2)
    session = Session(max_history_turns=16)
    on_a_clock(session, 1.0)
    calls: list[float] = []

    def later() -> Any:
        calls.append(time.monotonic())
        return view(0, 1) if len(calls) == 3 else None

    ups.expect(session, later)
    await asyncio.wait_for(_submitted(engine), 10)
    assert len(calls) == 3 and value(counters.warm_ups_expected) == 1
    ups.forget(session.id)

    other = Session(max_history_turns=16)
    on_a_clock(other, 1.0)
    never: list[float] = []
    due_s = time.monotonic() + 1.0
    ups.expect(other, lambda: never.append(time.monotonic()))  # type: ignore[func-returns-value]
    while other.id in ups._expected:
        await asyncio.sleep(0.02)
    assert 1 <= len(never) <= 9 and never[-1] < due_s + 0.2 + 0.05 and len(engine.submitted) == 1


async def test_a_session_asking_at_no_rhythm_expects_nothing() -> None:
    """Gaps of 1 s, 4 s and 1 s: no question is due at any time, and nothing is timed."""
    engine = Holding()
    ups, _ = expecting_ups(engine, 0.2)
    session = Session(max_history_turns=16)
    now_s = time.monotonic()
    for ago in (6.0, 5.0, 1.0):
        session.live_cadence.asked(now_s - ago)
    ups.expect(session, lambda: view(0))
    assert session.live_cadence.next_expected() is None and session.id not in ups._expected


async def test_frames_that_come_after_the_warm_up_and_before_the_question_are_warmed_up_too() -> None:
    """The timer looks again every quarter of the lead until the question is due: once the first warm-up has ended,
    frames gathered since are warmed up by another (a new frame alone is not, on a busy engine: `due`)."""
    engine = Holding()
    engine.active, engine.busy_s = 1, 1e6
    ups, counters = expecting_ups(engine, 0.2)
    session = Session(max_history_turns=16)
    on_a_clock(session, 1.0)
    views = iter([view(0, 1), None, view(0, 1, 2)])
    ups.expect(session, lambda: next(views, None))
    await asyncio.wait_for(_submitted(engine), 10)
    assert not ups.due(session, 1)
    ups.cancel(session.id)  # ended (as when the engine has taken and finished it)
    await asyncio.wait_for(_submitted(engine, 2), 10)
    assert [len(r.messages[-1].images) for r in engine.submitted] == [2, 3] and value(counters.warm_ups_expected) == 2
    ups.close()


async def test_on_a_fast_clock_the_lead_is_at_most_a_quarter_of_the_time_to_the_question() -> None:
    """Questions 0.4 s apart with a 1 s lead: the warm-up comes 0.1 s before the next, not at once (a lead as long as
    the gap would warm up every moment)."""
    engine = Holding()
    ups, _ = expecting_ups(engine, 1.0)
    session = Session(max_history_turns=16)
    on_a_clock(session, 0.4)
    asked_s = time.monotonic()
    ups.expect(session, lambda: view(0))
    await asyncio.wait_for(_submitted(engine), 10)
    assert time.monotonic() - asked_s >= 0.3 - 0.05
    ups.close()


async def test_a_forgotten_session_is_timed_no_more_and_its_warm_up_goes() -> None:
    """`TurnService.forget`: the session's timer and its warm-up under way go."""
    engine = Holding()
    ups, _ = expecting_ups(engine, 0.2)
    session = Session(max_history_turns=16)
    ups.start(session, view(0, 1))
    on_a_clock(session, 10.0)
    ups.expect(session, lambda: view(0))
    assert session.id in ups._expected and session.id in ups
    ups.forget(session.id)
    assert session.id not in ups._expected and session.id not in ups
    ups.close()  # and a closed service times and launches nothing more (a watch may still announce)
    ups.expect(session, lambda: view(0))
    ups.start(session, view(0, 1))
    assert session.id not in ups._expected and session.id not in ups


async def test_an_announced_question_is_warmed_up_ahead_with_no_clock_to_read() -> None:
    """A watch's next turn, announced 0.6 s ahead: warmed up `lead` before it (0.2 s, at most a quarter of the 0.6:
    0.15 s), a session with no questions before it, the engine busy."""
    engine = Holding()
    engine.active, engine.busy_s = 1, 1e6
    ups, counters = expecting_ups(engine, 0.2)
    session = Session(max_history_turns=16)
    announced_s = time.monotonic()
    ups.announce(session, announced_s + 0.6, lambda: view(0, 1))
    assert not engine.submitted
    await asyncio.wait_for(_submitted(engine), 10)
    assert time.monotonic() - announced_s >= 0.45 - 0.05 and value(counters.warm_ups_expected) == 1
    ups.close()


async def test_a_withdrawn_announcement_times_nothing_and_the_sessions_own_clock_counts_again() -> None:
    """A watch that stops withdraws its tick: its timer goes; a session asking on its own clock is timed by that."""
    engine = Holding()
    ups, _ = expecting_ups(engine, 0.2)
    session = Session(max_history_turns=16)
    ups.announce(session, time.monotonic() + 5.0, lambda: view(0))
    assert session.id in ups._expected
    ups.announce(session, None, lambda: view(0))
    assert session.id not in ups._expected and session.live_cadence.next_expected() is None
    on_a_clock(session, 10.0)
    session.live_cadence.asked(time.monotonic())
    ups.announce(session, None, lambda: view(0))
    assert session.id in ups._expected  # due 10 s after the last question, by the session's own clock
    ups.close()
