"""The local engine's waiting line: bounded admission, and turns arriving together at an idle engine gathered into one prefill."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from gateway.engine.contract import ChatMessage, EngineFull, GenerationRequest, GenerationResult, SamplingParams
from gateway.engine.local.waiting import Admissions, Job, WaitingLine

FOREVER_S = 3600.0  # a gather window no test outlives: a take that returns did not wait for it


class Sink:
    def on_queued(self, position: int) -> None: ...

    def on_token(self, text: str) -> None: ...

    def on_done(self, result: GenerationResult) -> None: ...


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def job(loop: asyncio.AbstractEventLoop) -> Job:
    return Job(GenerationRequest([ChatMessage("user", "hi")], SamplingParams()), Sink(), loop)


def take_in_thread(line: WaitingLine, active: int) -> tuple[threading.Thread, list[Admissions]]:
    taken: list[Admissions] = []
    thread = threading.Thread(target=lambda: taken.append(line.take(active, None)), daemon=True)
    thread.start()
    return thread, taken


def admitted(taken: list[Admissions]) -> int:
    assert len(taken) == 1 and taken[0][0] is not None
    return len(taken[0][0])


def test_a_lone_turn_on_an_idle_engine_waits_only_the_quiet_gap(loop: asyncio.AbstractEventLoop) -> None:
    """One turn with no other after it within `quiet_s` is taken without waiting out the gather window."""
    line = WaitingLine(queue_size=8, max_batch=4, max_prefills_per_step=4, gather_s=FOREVER_S, quiet_s=0.01)
    line.offer(job(loop))
    thread, taken = take_in_thread(line, active=0)
    thread.join(60)
    assert admitted(taken) == 1


def test_turns_arriving_together_are_gathered_until_the_batch_is_full(loop: asyncio.AbstractEventLoop) -> None:
    """Turns waiting on an empty batch wait for the rest of their burst; a full batch's room ends the wait,
    and every turn is admitted in the same step (one prefill pass)."""
    line = WaitingLine(queue_size=8, max_batch=4, max_prefills_per_step=4, gather_s=FOREVER_S, quiet_s=FOREVER_S)
    line.offer(job(loop))
    line.offer(job(loop))
    thread, taken = take_in_thread(line, active=0)
    line.offer(job(loop))
    thread.join(0.5)
    assert thread.is_alive() and not taken  # still gathering three turns of four
    line.offer(job(loop))
    thread.join(60)
    assert admitted(taken) == 4


def test_the_gather_window_ends_a_burst_that_keeps_coming(loop: asyncio.AbstractEventLoop) -> None:
    """However closely turns follow each other, the burst is taken `gather_s` after its first turn."""
    line = WaitingLine(queue_size=8, max_batch=4, max_prefills_per_step=4, gather_s=0.01, quiet_s=FOREVER_S)
    line.offer(job(loop))
    line.offer(job(loop))
    thread, taken = take_in_thread(line, active=0)
    thread.join(60)
    assert admitted(taken) == 2


def test_a_quiet_gap_ends_a_burst(loop: asyncio.AbstractEventLoop) -> None:
    """No new turn within `quiet_s` of the last one: the burst is over and is taken."""
    line = WaitingLine(queue_size=8, max_batch=4, max_prefills_per_step=4, gather_s=FOREVER_S, quiet_s=0.01)
    line.offer(job(loop))
    line.offer(job(loop))
    thread, taken = take_in_thread(line, active=0)
    thread.join(60)
    assert admitted(taken) == 2


def test_nothing_waits_while_turns_decode(loop: asyncio.AbstractEventLoop) -> None:
    """With turns decoding, newcomers join at the next step, however many arrive."""
    line = WaitingLine(queue_size=8, max_batch=4, max_prefills_per_step=4, gather_s=FOREVER_S, quiet_s=FOREVER_S)
    line.offer(job(loop))
    line.offer(job(loop))
    thread, taken = take_in_thread(line, active=1)
    thread.join(60)
    assert admitted(taken) == 2


def test_stopping_ends_a_gather_and_cancels_the_waiting(loop: asyncio.AbstractEventLoop) -> None:
    """Stop during a gather: the thread is told to stop and the waiting turns come back to be cancelled."""
    line = WaitingLine(queue_size=8, max_batch=4, max_prefills_per_step=4, gather_s=FOREVER_S, quiet_s=FOREVER_S)
    line.offer(job(loop))
    line.offer(job(loop))
    thread, taken = take_in_thread(line, active=0)
    thread.join(0.5)
    line.stop()
    thread.join(60)
    assert len(taken) == 1 and taken[0][0] is None and len(taken[0][1]) == 2


def test_turns_beyond_the_batch_and_the_queue_are_refused(loop: asyncio.AbstractEventLoop) -> None:
    """Free batch places plus `queue_size` turns wait; the next is refused as full."""
    line = WaitingLine(queue_size=3, max_batch=3, max_prefills_per_step=3)
    aheads = [line.offer(job(loop)) for _ in range(6)]
    assert aheads == [-3, -2, -1, 0, 1, 2]
    with pytest.raises(EngineFull):
        line.offer(job(loop))


def test_a_turn_is_marked_admitted_exactly_when_it_leaves_the_line(loop: asyncio.AbstractEventLoop) -> None:
    """Three turns for two places: the two the batch takes are `admitted`, the one still counted as waiting
    is not (a detaching session's turn is told apart from the others waiting by this)."""
    line = WaitingLine(queue_size=8, max_batch=2, max_prefills_per_step=4)
    jobs = [job(loop) for _ in range(3)]
    for queued in jobs:
        line.offer(queued)
    assert not any(queued.request.handle.admitted.is_set() for queued in jobs)
    thread, taken = take_in_thread(line, active=0)
    thread.join(60)
    assert admitted(taken) == 2 and len(line) == 1
    assert [queued.request.handle.admitted.is_set() for queued in jobs] == [True, True, False]


def warm_up(loop: asyncio.AbstractEventLoop, affinity: str) -> Job:
    request = GenerationRequest([ChatMessage("user", "hi")], SamplingParams(max_tokens=1), affinity=affinity, warm_up=True)
    return Job(request, Sink(), loop)


def test_a_warm_up_is_taken_only_when_the_batch_is_empty_and_no_turn_waits(loop: asyncio.AbstractEventLoop) -> None:
    """Warm-ups fill idle time only: not beside a decoding batch, not ahead of a waiting turn (which is taken
    instead, the warm-up left waiting), and one at a time; they never count as waiting turns."""
    line = WaitingLine(queue_size=8, max_batch=4, max_prefills_per_step=4)
    first, second = warm_up(loop, "a"), warm_up(loop, "b")
    assert line.offer(first) < 0 and line.offer(second) < 0 and len(line) == 0
    assert line.take(active=1, idle_s=0)[0] == []  # a batch decodes: no warm-up joins it
    turn = job(loop)
    line.offer(turn)
    assert line.take(active=0, idle_s=0)[0] == [turn]  # a turn waits: it goes, the warm-ups stay
    assert line.take(active=1, idle_s=0)[0] == []
    taken = line.take(active=0, idle_s=0)[0]
    assert taken == [first] and first.request.handle.admitted.is_set() and not second.request.handle.admitted.is_set()
    assert line.take(active=0, idle_s=0)[0] == [second]


def test_a_newer_warm_up_replaces_the_sessions_waiting_one_and_they_are_bounded(loop: asyncio.AbstractEventLoop) -> None:
    """A session's newer warm-up cancels its older one still waiting (reported cancelled at the next take);
    past max_batch waiting warm-ups, another is refused (EngineFull)."""
    line = WaitingLine(queue_size=8, max_batch=2, max_prefills_per_step=2)
    old, new = warm_up(loop, "a"), warm_up(loop, "a")
    line.offer(old)
    line.offer(new)
    assert old.request.handle.cancelled.is_set() and not new.request.handle.cancelled.is_set()
    line.offer(warm_up(loop, "b"))
    with pytest.raises(EngineFull):
        line.offer(warm_up(loop, "c"))
    taken, cancelled, _ = line.take(active=0, idle_s=0)
    assert taken == [new] and cancelled == [old]


def test_a_sessions_turn_cancels_its_warm_up_waiting_or_given_way_and_a_parked_one_goes_first(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """A warm-up that gave way (`park`) goes back to the front of its line, taken again when idle; its own session's
    turn, once offered, cancels it there (its prompt is stale, whatever the turn service knew of it), and another
    session's turn does not. Past max_batch waiting warm-ups, or behind a newer one of its session, none is parked."""
    line = WaitingLine(queue_size=8, max_batch=2, max_prefills_per_step=2)
    first, other = warm_up(loop, "a"), warm_up(loop, "b")
    line.offer(first)
    line.offer(other)
    assert line.take(active=0, idle_s=0)[0] == [first]
    assert line.park(first) and not first.request.handle.admitted.is_set()
    assert line.take(active=0, idle_s=0)[0] == [first]  # ahead of the one that waited all along
    assert line.park(first)
    turn = Job(GenerationRequest([ChatMessage("user", "hi")], SamplingParams(), affinity="a"), Sink(), loop)
    line.offer(turn)
    assert first.request.handle.cancelled.is_set() and not other.request.handle.cancelled.is_set()
    taken, cancelled, _ = line.take(active=0, idle_s=0)
    assert taken == [turn] and cancelled == [first]
    newer = warm_up(loop, "b")
    line.offer(newer)  # replaces the older of session b
    assert not line.park(warm_up(loop, "b")) and line.park(warm_up(loop, "c"))
    assert not line.park(warm_up(loop, "d"))  # two wait already


def test_waiting_warm_ups_wake_an_idle_line_and_go_when_it_stops(loop: asyncio.AbstractEventLoop) -> None:
    """An idle generation thread wakes for a warm-up; stopping cancels those still waiting."""
    line = WaitingLine(queue_size=8, max_batch=4, max_prefills_per_step=4)
    thread, taken = take_in_thread(line, active=0)
    waiting = warm_up(loop, "a")
    line.offer(waiting)
    thread.join(60)
    assert taken[0][0] == [waiting]
    left = warm_up(loop, "b")
    line.offer(left)
    line.stop()
    assert line.take(active=0, idle_s=0)[:2] == (None, [left])
