"""A turn's videos, and a live turn's window, read as clips stay clips in later prompts while the session's timeline
knows them."""

from __future__ import annotations

from typing import Any

from gateway.core.live_timeline import LiveTimeline
from gateway.core.live_view import LiveView
from gateway.core.prompts import session_turns
from gateway.core.request import TurnRequest
from gateway.core.session import Session
from gateway.core.video_frames import window_clip
from gateway.engine.contract import ChatMessage, ChatVideo
from gateway.media.video import DecodedVideo, VideoFrame
from tests.unit.core.test_live_timeline import FRAMES, count, view

VIDEO = DecodedVideo(tuple(VideoFrame(frame.image, 500 * n) for n, frame in enumerate(FRAMES[:3])), "v" * 64)
CLIP = ChatVideo(tuple(frame.image for frame in VIDEO.frames), (0, 500, 1000), VIDEO.sha256)


class OneVideo:
    """A turn whose only attachment is VIDEO."""

    async def load(self, images: Any, urls: Any) -> tuple[()]:
        return ()

    async def load_videos(self, videos: Any) -> tuple[DecodedVideo, ...]:
        return (VIDEO,) if videos else ()


async def turn(
    session: Session, turn_id: str, text: str, videos: tuple[bytes, ...] = (), live: LiveView | None = None
) -> list[ChatMessage]:
    """A turn as the turn service runs it on an engine that reads video (loaded, planned, recorded): its messages."""
    request = TurnRequest(turn_id, text, videos=videos, live=live)
    prompted, recorded = await session_turns(OneVideo(), session, request, False, reads_video=True)  # type: ignore[arg-type]
    plan = await session.plan(prompted, 4, 10_000, count)
    session.record(recorded, "ok", False, session.epoch)
    return plan.messages


async def test_a_later_prompt_shows_a_turns_clip_as_its_own_prompt_did() -> None:
    """The video's message reads the same in the next prompt (a clip, not its frames), so that prompt opens with
    the earlier one; the history still holds the frames as images, counted once."""
    session = Session(max_history_turns=16)
    first = await turn(session, "t0", "What happens?", (b"video",))
    later = await turn(session, "t1", "And then?")
    assert first == [ChatMessage("user", "What happens?", (), videos=(CLIP,))]
    assert later[0] == first[0] and later[1] == ChatMessage("assistant", "ok") and later[2].text == "And then?"
    assert len(session.exchanges[0].turn.images) == 3  # recorded as frames: what history and the store keep
    assert session.held_image_bytes == sum(len(frame.image.data) for frame in VIDEO.frames)


async def test_a_video_message_the_timeline_does_not_know_reads_as_its_frames() -> None:
    """After a restart (a timeline that never saw the turn: it is in memory only) the message shows its frames."""
    session = Session(max_history_turns=16)
    await turn(session, "t0", "What happens?", (b"video",))
    session.timeline = LiveTimeline()
    later = await turn(session, "t1", "And then?")
    assert later[0].videos == () and len(later[0].images) == 3 and later[0].text.startswith("[video 1, 0.0 s]")


async def test_a_later_prompt_shows_a_live_turns_window_clip_as_its_own_prompt_did() -> None:
    """A live turn's window read as one clip reads as that clip again in the next prompt, after its summary (what
    the history holds), so that prompt opens with the live turn's; the window's frames are held by the timeline
    alone, counted once; after a restart (a new timeline) the exchange reads as its summary."""
    session = Session(max_history_turns=16)
    first = await turn(session, "t0", "What moved?", live=view(0, 1, 2))
    later = await turn(session, "t1", "And then?")
    summary = "[live camera: 3 frames, 0.000 s to 0.200 s]\nWhat moved?"
    clip = window_clip(view(0, 1, 2).snapshot.frames)
    assert first == [ChatMessage("user", summary, (), videos=(clip,))]
    assert later[0] == first[0] and later[2].text == "And then?"
    assert session.exchanges[0].turn.text == summary and session.exchanges[0].turn.images == ()
    assert session.held_image_bytes == sum(len(FRAMES[n].image.data) for n in range(3))
    session.timeline = LiveTimeline()
    assert (await turn(session, "t2", "Now?"))[0] == ChatMessage("user", summary)


async def test_a_live_turn_s_clip_holds_only_the_frames_no_earlier_clip_showed() -> None:
    """The next live turn over an overlapping window reads only its new frames as its clip (timed from the first of
    them), after the earlier exchange shown as it was: the window's KV before them is the earlier turn's. A window
    every frame of which was shown reads as no clip; each prompt opens with the one before it."""
    session = Session(max_history_turns=16)
    first = await turn(session, "t0", "What moved?", live=view(0, 1, 2))
    second = await turn(session, "t1", "And now?", live=view(1, 2, 3, 4))
    assert second[0] == first[0]
    assert second[2].videos == (window_clip(view(3, 4).snapshot.frames),)
    assert second[2].videos[0].ts_ms == (0, 100)
    assert second[2].text == "[live camera: 4 frames, 0.100 s to 0.400 s]\nAnd now?"
    third = await turn(session, "t2", "Still?", live=view(2, 3, 4))
    assert third[:3] == second and third[4] == ChatMessage("user", "[live camera: 3 frames, 0.200 s to 0.400 s]\nStill?")
    assert session.held_image_bytes == sum(len(FRAMES[n].image.data) for n in range(5))


async def test_a_live_clip_asks_room_only_for_the_frames_no_earlier_clip_holds() -> None:
    """A native-video live turn whose window's older frames an earlier live clip holds asks the session's image room
    for its new frames only (the timeline counts the others already), as the frames-as-images path does."""
    session = Session(max_history_turns=16)
    request = TurnRequest("t0", "What moved?", live=view(0, 1, 2))
    prompted, recorded = await session_turns(OneVideo(), session, request, False, reads_video=True)  # type: ignore[arg-type]
    assert prompted.image_bytes == sum(len(FRAMES[n].image.data) for n in range(3))
    await session.plan(prompted, 4, 10_000, count)
    session.record(recorded, "ok", False, session.epoch)
    request = TurnRequest("t1", "And now?", live=view(1, 2, 3))
    prompted, _ = await session_turns(OneVideo(), session, request, False, reads_video=True)  # type: ignore[arg-type]
    assert prompted.image_bytes == len(FRAMES[3].image.data)
