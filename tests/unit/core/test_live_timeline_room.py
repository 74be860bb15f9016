"""The live timeline's share of a session's images (each frame counted once) and its frames in a fork."""

from __future__ import annotations

from typing import Any

from gateway.core.live_view import LiveView
from gateway.core.prompts import session_turns
from gateway.core.request import TurnRequest
from gateway.core.session import Session
from tests.unit.core.test_live_timeline import FRAMES, count, view


class NoAttachments:
    """A turn with no images or videos of its own: only its live frames."""

    async def load(self, images: Any, urls: Any) -> tuple[()]:
        return ()

    async def load_videos(self, videos: Any) -> tuple[()]:
        return ()


async def live_turn(session: Session, turn_id: str, window: LiveView, keep_last_frame: bool = False) -> int:
    """A live turn as the turn service runs it (loaded, planned, recorded); the image bytes its prompt added."""
    request = TurnRequest(turn_id, f"what changed in {turn_id}?", live=window)
    prompted, recorded = await session_turns(NoAttachments(), session, request, keep_last_frame)  # type: ignore[arg-type]
    await session.plan(prompted, 4, 10_000, count)
    session.record(recorded, "ok", False, session.epoch)
    return prompted.image_bytes


def frame_bytes(*frames: int) -> int:
    return sum(len(FRAMES[n].image.data) for n in frames)


async def test_a_live_turn_adds_only_the_frames_no_exchange_showed() -> None:
    """A window whose older frames an earlier live exchange showed adds only its new frame to the images the
    session holds: the turn's room is asked for that frame, not the whole window again."""
    session = Session(max_history_turns=16)
    assert await live_turn(session, "l1", view(0, 1)) == frame_bytes(0, 1)
    assert await live_turn(session, "l2", view(0, 1, 2)) == frame_bytes(2)
    assert session.held_image_bytes == frame_bytes(0, 1, 2)


async def test_a_frame_kept_as_the_last_of_an_exchange_counts_once() -> None:
    """With `live_history_last_frame`, the frame the history keeps is also the timeline's: it counts once."""
    session = Session(max_history_turns=16)
    await live_turn(session, "l1", view(0, 1), keep_last_frame=True)
    assert [image.sha256 for image in session.exchanges[0].turn.images] == [FRAMES[1].image.sha256]
    assert session.held_image_bytes == frame_bytes(0, 1)


async def test_a_fork_shows_the_frames_of_the_live_exchanges_on_its_path() -> None:
    """A fork's first prompt is its source's: the live exchanges it holds show their frames where they stood, so
    the KV held for the source's prompt serves it; the fork's images count them."""
    source = Session(max_history_turns=16, system="You are terse.")
    await live_turn(source, "l1", view(0, 1))
    await live_turn(source, "l2", view(0, 1, 2))
    forked = Session(max_history_turns=16)
    forked.adopt(source.conversation.fork(), source)
    request = TurnRequest("t3", "and then?")
    turns = [await session_turns(NoAttachments(), s, request, False) for s in (source, forked)]  # type: ignore[arg-type]
    plans = [await s.plan(prompted, 4, 10_000, count) for s, (prompted, _) in zip((source, forked), turns)]
    assert plans[0].messages == plans[1].messages
    assert [len(m.images) for m in plans[1].messages] == [0, 2, 0, 1, 0, 0]
    assert forked.held_image_bytes == source.held_image_bytes == frame_bytes(0, 1, 2)


async def test_a_fork_above_a_live_exchange_leaves_its_frames_behind() -> None:
    """A fork of the path down to the first reply holds only the first exchange's frames."""
    source = Session(max_history_turns=16)
    await live_turn(source, "l1", view(0, 1))
    await live_turn(source, "l2", view(0, 1, 2))
    forked = Session(max_history_turns=16)
    forked.adopt(source.conversation.fork(source.conversation.path[1].id), source)
    prompted, _ = await session_turns(NoAttachments(), forked, TurnRequest("t", "x"), False)  # type: ignore[arg-type]
    plan = await forked.plan(prompted, 4, 10_000, count)
    assert [len(m.images) for m in plan.messages] == [2, 0, 0]
    assert forked.held_image_bytes == frame_bytes(0, 1)
