"""The live timeline on the real engine (demo model): a live turn prefills only its new frames and its text, the
earlier live exchanges' frames held where they stood; greedy replies match an engine that holds no KV."""

from __future__ import annotations

from gateway.core.live_timeline import LiveTimeline
from gateway.core.live_turn import live_turns, timeline_entry
from gateway.core.live_view import LiveView
from gateway.core.live_window import LiveFrame, LiveSnapshot
from gateway.core.session import Session, UserTurn
from gateway.engine.contract import ChatMessage, GenerationResult
from gateway.engine.local.engine import LocalEngine
from tests.conftest import chat_image
from tests.unit.engine.test_prefix_cache import engines, generate

__all__ = ["engines"]  # the warm (reuse on) and cold (reuse off) engines on the demo model

COLORS = [(220, 20, 20), (20, 20, 220), (20, 200, 20), (200, 200, 20), (20, 200, 200)]
FRAMES = [LiveFrame(chat_image(color, (80, 60), "JPEG"), b"", 100 * n, 100 * n) for n, color in enumerate(COLORS)]
Engines = tuple[LocalEngine, LocalEngine]


def view(*frames: int) -> LiveView:
    return LiveView("camera", LiveSnapshot(tuple(FRAMES[n] for n in frames), 0))


async def count(messages: list[ChatMessage]) -> int:
    return 0  # the plans here never trim


async def live_turn(
    engine: LocalEngine, session: Session, turn_id: str, window: LiveView
) -> tuple[list[ChatMessage], GenerationResult]:
    """One live turn as the turn service runs it: laid out on the timeline, planned, generated, recorded."""
    turn = UserTurn(turn_id, f"what changed in {turn_id}?")
    prompted, recorded = live_turns(turn, window, keep_last_frame=False)
    session.timeline.begin(turn.id, timeline_entry(turn, window, recorded))
    plan = await session.plan(prompted, 4, 10_000, count)
    result = await generate(engine, plan.messages)
    session.record(recorded, result.text, False, session.epoch)
    return plan.messages, result


async def test_a_live_turn_prefills_only_its_new_frames_and_text(engines: Engines) -> None:
    """The second live turn's held KV covers the first's whole prompt, its frames included; it shows only the
    frame the first did not, so it prefills the first reply, its text and that one frame; greedy, it answers as
    an engine holding nothing does."""
    warm, cold = engines
    session = Session(max_history_turns=16, system="You are terse.")
    first_messages, first = await live_turn(warm, session, "l1", view(0, 1))
    messages, second = await live_turn(warm, session, "l2", view(0, 1, 2))
    assert messages[: len(first_messages) - 1] == first_messages[:-1] and len(messages[1].images) == 2
    assert [len(m.images) for m in messages] == [0, 2, 0, 1] and messages[-1].text.startswith("[camera, 0.200 s]\n")
    without_frame = await warm.count_prompt_tokens([*messages[:-1], ChatMessage("user", messages[-1].text)])
    alone = [ChatMessage("user", "x", (FRAMES[2].image,))]
    frame = await warm.count_prompt_tokens(alone) - await warm.count_prompt_tokens([ChatMessage("user", "x")])
    assert second.cached_tokens == first.prompt_tokens  # what is prefilled: the first reply, the text, one frame
    assert second.prompt_tokens - without_frame == frame > 0
    assert second.token_ids == (await generate(cold, messages)).token_ids


async def test_an_exchange_the_timeline_does_not_know_reads_as_its_summary(engines: Engines) -> None:
    """After a resume (a new timeline) the live exchange is its summary in history and the next live turn shows
    its whole window, answering as an engine holding nothing does."""
    warm, cold = engines
    session = Session(max_history_turns=16)
    await live_turn(warm, session, "l1", view(0, 1))
    session.timeline = LiveTimeline()
    messages, result = await live_turn(warm, session, "l2", view(0, 1, 2))
    assert messages[0].text.startswith("[live camera: 2 frames") and not messages[0].images
    assert len(messages[-1].images) == 3 and result.token_ids == (await generate(cold, messages)).token_ids


async def test_the_timeline_is_bounded_and_drops_the_oldest_in_bulk() -> None:
    """Past `max_frames` the oldest exchanges are forgotten until half remain, so the prompt changes once."""
    session = Session(max_history_turns=16)
    session.timeline.max_frames = 4
    for n in range(5):
        turn = UserTurn(f"l{n}", "and now?")
        prompted, recorded = live_turns(turn, view(n), keep_last_frame=False)
        session.timeline.begin(turn.id, timeline_entry(turn, view(n), recorded))
        await session.plan(prompted, 4, 10_000, count)
        session.record(recorded, "ok", False, session.epoch)
        assert session.timeline.frames <= 4
    assert [f"l{n}" in session.timeline for n in range(5)] == [False, False, False, True, True]


async def test_an_edited_live_message_reads_as_itself() -> None:
    """A live exchange whose message was edited no longer shows the frames remembered for the original."""
    session = Session(max_history_turns=16)
    turn = UserTurn("l1", "what is it?")
    prompted, recorded = live_turns(turn, view(0), keep_last_frame=False)
    session.timeline.begin(turn.id, timeline_entry(turn, view(0), recorded))
    await session.plan(prompted, 4, 10_000, count)
    session.record(recorded, "ok", False, session.epoch)
    session.edit(session.conversation.path[0].id, "edited", None)
    plan = await session.plan(UserTurn("t2", "next"), 4, 10_000, count)
    assert plan.messages[0] == ChatMessage("user", "edited")


async def test_the_timeline_counts_in_the_images_held_and_goes_first_to_make_room() -> None:
    """The timeline's frames count in the session's held image bytes (the image ledger's figure) and are
    forgotten, oldest first, before any branch or turn when a turn's images need the room."""
    session = Session(max_history_turns=16)
    for n in range(2):
        turn = UserTurn(f"l{n}", "and now?")
        prompted, recorded = live_turns(turn, view(n), keep_last_frame=False)
        session.timeline.begin(turn.id, timeline_entry(turn, view(n), recorded))
        await session.plan(prompted, 4, 10_000, count)
        session.record(recorded, "ok", False, session.epoch)
    frame_bytes = [len(FRAMES[n].image.data) for n in range(2)]
    assert session.held_image_bytes == session.image_bytes + sum(frame_bytes) == sum(frame_bytes)
    session.make_image_room(frame_bytes[1])
    assert ["l0" in session.timeline, "l1" in session.timeline] == [False, True] and len(session.exchanges) == 2


async def test_two_live_exchanges_with_one_turn_id_each_keep_their_frames() -> None:
    """Exchanges are known by their messages' item ids: a turn id used again (a new watch's `watch-1`) leaves
    the earlier exchange's frames where they stood."""
    session = Session(max_history_turns=16)
    for n in range(2):
        turn = UserTurn("watch-1", "and now?")
        prompted, recorded = live_turns(turn, view(n), keep_last_frame=False)
        session.timeline.begin(turn.id, timeline_entry(turn, view(n), recorded))
        await session.plan(prompted, 4, 10_000, count)
        session.record(recorded, "ok", False, session.epoch)
    plan = await session.plan(UserTurn("t", "next"), 4, 10_000, count)
    assert [m.images for m in plan.messages] == [(FRAMES[0].image,), (), (FRAMES[1].image,), (), ()]


async def test_a_turn_that_is_not_live_reads_as_itself_whatever_its_id() -> None:
    """A text turn begun with an earlier live turn's id (a client may use one again) shows no frames."""
    session = Session(max_history_turns=16)
    turn = UserTurn("t1", "what is it?")
    session.timeline.begin(turn.id, timeline_entry(turn, view(0), live_turns(turn, view(0), False)[1]))
    session.timeline.begin(turn.id, None)
    plan = await session.plan(turn, 4, 10_000, count)
    assert plan.messages == [ChatMessage("user", "what is it?")]
