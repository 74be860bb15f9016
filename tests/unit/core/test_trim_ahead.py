"""Trimming ahead: a turn's end near the context's edge fixes the next turn's drops and submits the prompt they leave as
a warm-up; the next plans read that prompt; far from the edge, or with it off, nothing happens."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.config import Settings
from gateway.core.frames_ahead import FramesAhead
from gateway.core.session import Session, UserTurn
from gateway.core.warm_ups import WarmUps, spread
from gateway.engine.contract import ChatMessage
from gateway.metrics import LiveFrameCounters
from tests.unit.core.test_live_timeline import live_turn, view
from tests.unit.core.test_session import chat, count_chars, texts
from tests.unit.core.test_warm_ups import Holding
from tests.unit.engine.test_prefix_cache import engines

__all__ = ["engines"]  # the fixture: the demo engine with KV reuse on and off


async def test_a_trim_ahead_is_the_least_the_next_plans_drop_until_a_turn_drops_it() -> None:
    """With the first kept turn fixed ahead, a plan that would fit as it is drops the turns before it all the same
    (and says so); one that must drop more drops more; once a turn has dropped them, it is spent."""
    session = Session(max_history_turns=10)
    chat(session, "1", "2", "3", "4")
    ahead = await session.plan(UserTurn(id="x", text=""), 2, 12, count_chars)  # 4 exchanges of 4 in 10: two drops
    assert ahead.dropped_turns == 2
    session.trim_ahead_at(ahead)
    plan = await session.plan(UserTurn(id="5", text="u5"), 2, 100, count_chars)
    assert plan.dropped_turns == 2 and texts(plan.messages)[0] == ("user", "u3")
    assert (await session.plan(UserTurn(id="5", text="u5" * 5), 2, 16, count_chars)).dropped_turns == 3
    session.drop_oldest(plan.dropped_turns)
    assert session.trim_ahead is None
    assert (await session.plan(UserTurn(id="6", text="u6"), 2, 100, count_chars)).dropped_turns == 0


async def test_a_trim_ahead_holds_only_while_the_path_extends_the_one_it_was_fixed_on() -> None:
    """Sized for the history it was planned on: a deletion since (or an edit, a switch of branch) leaves a shorter or
    another path, and the next plan drops nothing for it, though its item still opens a turn."""
    session = Session(max_history_turns=10)
    chat(session, "1", "2", "3", "4")
    session.trim_ahead_at(await session.plan(UserTurn(id="x", text=""), 2, 12, count_chars))
    assert (await session.plan(UserTurn(id="5", text="u5"), 2, 100, count_chars)).dropped_turns == 2
    session.delete(session.conversation.path[-1].id)  # the last reply
    assert (await session.plan(UserTurn(id="5", text="u5"), 2, 100, count_chars)).dropped_turns == 0


async def test_a_trim_ahead_whose_turn_has_left_the_path_is_ignored() -> None:
    """An edit or a branch switch that takes the path elsewhere leaves no turn opening with the fixed item: no drops."""
    session = Session(max_history_turns=10)
    chat(session, "1", "2", "3")
    session.trim_ahead_at(await session.plan(UserTurn(id="x", text=""), 2, 10, count_chars))
    assert session.trim_ahead is not None
    session.trim_ahead = "an item on no path"
    assert (await session.plan(UserTurn(id="8", text="u8"), 2, 100, count_chars)).dropped_turns == 0


class Counting(Holding):
    """A holding engine with a small window whose token counts are characters."""

    context_tokens = 40

    async def count_prompt_tokens(self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] = ()) -> int:
        return await count_chars(messages)


def trimming(engine: Holding, on: bool = True) -> tuple[WarmUps, LiveFrameCounters]:
    counters = LiveFrameCounters(CollectorRegistry())
    ahead = FramesAhead(engine, 4, 1)  # type: ignore[arg-type]
    defaults: Any = lambda options: (4, None, ())  # noqa: E731 (max_tokens, adapter, tools)
    settings = Settings(trim_ahead=on, trim_headroom=0.25)
    return WarmUps(engine, settings, counters, ahead, defaults), counters  # type: ignore[arg-type]


async def test_a_turns_end_near_the_edge_fixes_the_next_drops_and_submits_that_prompt_as_a_warm_up() -> None:
    """Window 40, max_tokens 4, headroom 10: a turn ending with 30 tokens of prompt and reply is within the headroom.
    The next turn asking nothing, with 2 kept for its question, must drop exchanges: they are fixed, and the prompt
    they leave (ending in an empty user message) is submitted as a warm-up for the session; the next turn reads it."""
    engine = Counting()
    ups, counters = trimming(engine)
    session = Session(max_history_turns=16)
    chat(session, *"123456789")  # 9 exchanges of 4 characters: 36 over the 40 - 6 the next turn may have
    ups.after_turn(session, 20, 2)  # far from the edge (40 - 4 - 10 = 26): nothing
    assert session.id not in ups and not engine.submitted
    ups.after_turn(session, 30, 2)
    await asyncio.wait_for(_submitted(engine), 10)
    (warm_up,) = engine.submitted
    assert warm_up.warm_up and warm_up.affinity == session.id and warm_up.params.max_tokens == 1
    assert warm_up.messages[-1] == ChatMessage("user", "") and session.trim_ahead is not None
    assert counters.trims_ahead._value.get() == 1
    plan = await session.plan(UserTurn(id="10", text="u10"), 4, 40, count_chars, headroom=0.25)
    assert plan.messages[:-1] == warm_up.messages[:-1] and plan.dropped_turns > 0


async def test_no_trim_ahead_where_the_next_turn_fits_or_it_is_off() -> None:
    """A history near the edge whose next turn still fits drops nothing ahead; with `trim_ahead` off nothing is
    planned at all."""
    engine = Counting()
    ups, _ = trimming(engine)
    session = Session(max_history_turns=16)
    chat(session, "1", "2", "3", "4", "5")  # 20 characters: the next turn asking nothing fits within 40 - 4 - 2
    ups.after_turn(session, 30, 2)
    await planned(ups, session)
    assert not engine.submitted and session.trim_ahead is None
    off, _ = trimming(engine, on=False)
    chat(session, "6", "7", "8")
    off.after_turn(session, 30, 2)
    assert session.id not in off and not engine.submitted


async def planned(ups: WarmUps, session: Session) -> None:
    """Until the session's trim ahead (started by `after_turn`, and held in `_running` until it ends) has ended."""
    running = ups._running.get(session.id)
    if running is not None:
        await asyncio.wait_for(running[0], 10)


async def _submitted(engine: Holding) -> None:
    while not engine.submitted:
        await asyncio.sleep(0.005)


async def test_a_timeline_that_the_next_live_turn_would_shed_is_shed_ahead_and_its_prompt_prefilled(engines: Any) -> None:
    """Far from the context's edge, a session whose live timeline holds so many frames that its next live turn (its
    window full) would shed old exchanges' frames sheds them at the turn's end, as that turn would (until half
    remain, the window included), and the prompt that leaves (those exchanges read as their summaries) is submitted
    as a warm-up: the next live turn's `begin` sheds nothing more."""
    warm, _ = engines
    session = Session(max_history_turns=16)
    session.timeline.max_frames = 4
    await live_turn(warm, session, "l1", view(0, 1))
    await live_turn(warm, session, "l2", view(2, 3))
    engine = Holding()
    counters = LiveFrameCounters(CollectorRegistry())
    defaults: Any = lambda options: (4, None, ())  # noqa: E731 (max_tokens, adapter, tools)
    settings = Settings(live_window_frames=2)
    ups = WarmUps(engine, settings, counters, FramesAhead(engine, 4, 1), defaults)  # type: ignore[arg-type]
    assert session.timeline.frames == 4
    ups.after_turn(session, 50, 2)
    await asyncio.wait_for(_submitted(engine), 10)
    (warm_up,) = engine.submitted
    assert session.timeline.frames == 0 and not any(message.images for message in warm_up.messages)
    assert counters.trims_ahead._value.get() == 1 and session.trim_ahead is None


def test_a_sessions_spread_is_its_own_and_sessions_spread_over_it() -> None:
    """The same session id gives the same share every time, within [0, 1); a hundred sessions' shares fall in every
    fifth of it (so sessions running one loop trim in different rounds)."""
    shares = [spread(f"session-{n}") for n in range(100)]
    assert shares == [spread(f"session-{n}") for n in range(100)] and all(0 <= share < 1 for share in shares)
    assert {int(share * 5) for share in shares} == {0, 1, 2, 3, 4}


async def test_of_two_sessions_with_the_same_history_the_one_spread_further_trims_ahead_sooner() -> None:
    """Window 40, max_tokens 4, headroom 10: one session keeps room for its question of 5 (spread near 0), the other
    up to 10 (spread near 1); with 28 tokens of history the second trims ahead and the first does not yet."""
    ids = [f"s{n}" for n in range(1000)]
    early, late = next(i for i in ids if spread(i) > 0.9), next(i for i in ids if spread(i) < 0.1)
    engine = Counting()
    ups, _ = trimming(engine)
    sessions = [Session(max_history_turns=16, id=early), Session(max_history_turns=16, id=late)]
    for session in sessions:
        chat(session, *"1234567")  # 28 characters
        ups.after_turn(session, 30, 2)
    await asyncio.wait_for(_submitted(engine), 10)
    await planned(ups, sessions[1])
    assert [request.affinity for request in engine.submitted] == [early]
    assert sessions[0].trim_ahead is not None and sessions[1].trim_ahead is None


async def test_no_trim_ahead_where_the_next_turn_would_drop_the_whole_history() -> None:
    """A turn that asked for nearly the whole window (a long reply) leaves a next turn asking as much no room for any
    exchange: dropping them all leaves nothing to prefill ahead, so nothing is fixed or submitted."""
    engine = Counting()
    ups, counters = trimming(engine)
    session = Session(max_history_turns=16)
    chat(session, "1")
    ups.after_turn(session, 4, 30, max_tokens=30)
    await planned(ups, session)
    assert not engine.submitted and session.trim_ahead is None and counters.trims_ahead._value.get() == 0
