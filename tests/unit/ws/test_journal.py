"""The journal on its own: frames numbered as they join, token deltas merged while unread, replay within
the byte budget, and a reader too far behind refused."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import CloseCode, ConnectionClosing
from gateway.ws import protocol as p
from gateway.ws.journal import Journal


def journal(max_bytes: int = 1 << 20, max_unsent: int = 100) -> Journal:
    return Journal(max_bytes=max_bytes, max_unsent=max_unsent)


def accepted(turn_id: str = "t1") -> p.AcceptedFrame:
    return p.AcceptedFrame(id=turn_id, prompt_tokens=3)


async def take_all(j: Journal) -> list[p.SessionFrame]:
    frames = []
    while j.unsent:
        frame = await j.take()
        assert frame is not None
        frames.append(frame)
    return frames


def test_frames_are_numbered_as_they_join() -> None:
    """Each frame gets the next seq, from 1."""
    j = journal()
    frames = [accepted(), p.ErrorFrame(code="busy", message="m"), accepted("t2")]
    for frame in frames:
        j.append(frame)
    assert [f.seq for f in frames] == [1, 2, 3] and j.last_seq == 3


async def test_unread_token_deltas_of_one_turn_merge_into_one_frame() -> None:
    """While the writer has not taken it, a turn's token frame grows instead of adding frames."""
    j = journal()
    for text in ("a", "b", "c"):
        j.append(p.TokenFrame(id="t1", text=text))
    (frame,) = await take_all(j)
    assert isinstance(frame, p.TokenFrame) and (frame.text, frame.seq) == ("abc", 1)


async def test_a_taken_token_frame_is_not_merged_into() -> None:
    """Once taken, a frame is final: the next delta is a new frame with the next seq."""
    j = journal()
    j.append(p.TokenFrame(id="t1", text="a"))
    await j.take()
    j.append(p.TokenFrame(id="t1", text="b"))
    (frame,) = await take_all(j)
    assert isinstance(frame, p.TokenFrame) and (frame.text, frame.seq) == ("b", 2)


async def test_tokens_of_different_turns_do_not_merge() -> None:
    """Deltas of another turn start a frame of their own."""
    j = journal()
    j.append(p.TokenFrame(id="t1", text="a"))
    j.append(p.TokenFrame(id="t2", text="b"))
    assert [f.id for f in await take_all(j) if isinstance(f, p.TokenFrame)] == ["t1", "t2"]


async def test_taken_frames_past_the_budget_are_dropped_oldest_first() -> None:
    """The byte budget bounds what is kept for replay; the newest frames stay."""
    j = journal(max_bytes=300)
    for n in range(20):
        j.append(p.TokenFrame(id=f"t{n}", text="x" * 10))
        await j.take()
    assert j.bytes <= 300
    replayed, gap = j.rewind(0)
    assert gap and 0 < replayed < 20


def test_unread_frames_are_never_dropped() -> None:
    """Frames nobody took stay past the budget; the journal says it is overflowing instead."""
    j = journal(max_bytes=100)
    for n in range(10):
        j.append(p.TokenFrame(id=f"t{n}", text="x" * 20))
    assert j.unsent == 10 and j.bytes > 100 and j.overflowing


async def test_rewind_replays_what_the_client_missed() -> None:
    """A resume from seq 1 replays frames 2 and 3, with no gap."""
    j = journal()
    for n in range(3):
        j.append(accepted(f"t{n}"))
    await take_all(j)
    assert j.rewind(1) == (2, False)
    assert [f.seq for f in await take_all(j)] == [2, 3]


def test_rewind_past_the_newest_frame_replays_nothing() -> None:
    """A client claiming more than was sent gets nothing replayed, and no gap."""
    j = journal()
    j.append(accepted())
    assert j.rewind(10) == (0, False)


async def test_a_reader_too_far_behind_is_a_slow_consumer() -> None:
    """Past max_unsent untaken frames, `take` closes the connection as slow_consumer."""
    j = journal(max_unsent=2)
    for n in range(3):
        j.append(accepted(f"t{n}"))
    with pytest.raises(ConnectionClosing) as closing:
        await j.take()
    assert closing.value.code is CloseCode.SLOW_CONSUMER


async def test_take_waits_for_a_frame() -> None:
    """A writer waiting on an empty journal gets the next frame appended."""
    j = journal()
    waiting = asyncio.create_task(j.take())
    await asyncio.sleep(0)
    j.append(accepted())
    assert (await waiting) is not None and j.unsent == 0


async def test_interrupt_wakes_a_waiting_writer_with_none() -> None:
    """`interrupt` ends a writer's wait with None, so it can follow another journal."""
    j = journal()
    waiting = asyncio.create_task(j.take())
    await asyncio.sleep(0)
    j.interrupt()
    assert await waiting is None
