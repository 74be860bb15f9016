"""Tests for gateway.core.session: history, images per turn, trimming, reset epochs and session defaults."""

from __future__ import annotations

import io
from collections.abc import Sequence

import pytest
from PIL import Image

from gateway.core.session import Exchange, Session, UserTurn
from gateway.engine.contract import ChatImage, ChatMessage, ToolCall
from gateway.errors import ErrorCode, GatewayError
from gateway.media.images import ImageLimits, check_image
from gateway.ws.protocol import SamplingOptions

LIMITS = ImageLimits(max_bytes=1_000_000, max_pixels=1_000_000)
BIG_CONTEXT = 1_000_000


def chars(messages: Sequence[ChatMessage]) -> int:
    """A fake token count: one token per character of text."""
    return sum(len(m.text) for m in messages)


async def count_chars(messages: Sequence[ChatMessage]) -> int:
    """The fake counter, as the engine's asynchronous contract has it."""
    return chars(messages)


def png_image(color: tuple[int, int, int], size: tuple[int, int] = (4, 3)) -> ChatImage:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return check_image(buffer.getvalue(), LIMITS)


def chat(session: Session, *texts: str) -> None:
    """Record one finished exchange per text: turn `u<text>` answered `a<text>`."""
    for text in texts:
        session.record(UserTurn(id=text, text=f"u{text}"), f"a{text}", partial=False, epoch=session.epoch)


def texts(messages: Sequence[ChatMessage]) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in messages]


# ---- history -----------------------------------------------------------------------------------


async def test_plan_lists_history_in_order_then_the_new_turn() -> None:
    """plan() gives system, then each past user/assistant pair oldest first, then the new turn."""
    session = Session(max_history_turns=10, system="sys")
    chat(session, "1", "2")
    plan = await session.plan(UserTurn(id="3", text="u3"), 10, BIG_CONTEXT, count_chars)
    assert texts(plan.messages) == [
        ("system", "sys"),
        ("user", "u1"),
        ("assistant", "a1"),
        ("user", "u2"),
        ("assistant", "a2"),
        ("user", "u3"),
    ]


async def test_plan_without_system_prompt_has_no_system_message() -> None:
    """A session with no system prompt sends no system message."""
    plan = await Session(max_history_turns=10).plan(UserTurn(id="1", text="hi"), 10, BIG_CONTEXT, count_chars)
    assert texts(plan.messages) == [("user", "hi")]


async def test_plan_reports_prompt_tokens_from_the_counter() -> None:
    """prompt_tokens is the counter's value for the planned messages."""
    session = Session(max_history_turns=10, system="sys")
    chat(session, "1")
    plan = await session.plan(UserTurn(id="2", text="u2"), 10, BIG_CONTEXT, count_chars)
    assert plan.prompt_tokens == chars(plan.messages) == len("sys" + "u1" + "a1" + "u2")


async def test_plan_does_not_change_history() -> None:
    """Planning a turn neither records it nor drops anything from history."""
    session = Session(max_history_turns=10)
    chat(session, "1", "2")
    await session.plan(UserTurn(id="3", text="u3"), 1, 6, count_chars)
    assert [e.turn.id for e in session.exchanges] == ["1", "2"]


async def test_images_stay_with_their_turn_across_later_turns() -> None:
    """Each image appears in the user message of the turn that sent it, however many turns later."""
    red, green, blue = png_image((255, 0, 0)), png_image((0, 255, 0)), png_image((0, 0, 255))
    session = Session(max_history_turns=10)
    session.record(UserTurn(id="1", text="two", images=(red, green)), "a1", partial=False, epoch=0)
    session.record(UserTurn(id="2", text="none"), "a2", partial=False, epoch=0)
    plan = await session.plan(UserTurn(id="3", text="one", images=(blue,)), 10, BIG_CONTEXT, count_chars)
    images = [[image.sha256 for image in m.images] for m in plan.messages]
    assert images == [[red.sha256, green.sha256], [], [], [], [blue.sha256]]


async def test_plan_images_carry_the_decoded_size() -> None:
    """A planned image carries the decoded image's width and height."""
    image = png_image((1, 2, 3), size=(7, 5))
    plan = await Session(max_history_turns=10).plan(UserTurn(id="1", text="x", images=(image,)), 1, 100, count_chars)
    (chat_image,) = plan.messages[0].images
    assert (chat_image.width, chat_image.height) == (7, 5)


async def test_assistant_messages_never_carry_images() -> None:
    """Replies in the plan carry no images even when their turn had some."""
    session = Session(max_history_turns=10)
    session.record(UserTurn(id="1", text="x", images=(png_image((9, 9, 9)),)), "a", partial=False, epoch=0)
    plan = await session.plan(UserTurn(id="2", text="y"), 1, 100, count_chars)
    assert plan.messages[1].role == "assistant" and plan.messages[1].images == ()


# ---- trimming ----------------------------------------------------------------------------------


async def test_plan_keeps_everything_when_it_fits() -> None:
    """When the whole history fits, nothing is dropped."""
    session = Session(max_history_turns=10)
    chat(session, "1", "2", "3")
    # three 4-character exchanges + the 2-character turn = 14 = 16 - 2
    plan = await session.plan(UserTurn(id="4", text="u4"), 2, 16, count_chars)
    assert plan.dropped_turns == 0 and len(plan.messages) == 7


async def test_trimming_drops_the_oldest_exchanges_first() -> None:
    """When history does not fit, the oldest exchanges go and the newest stay."""
    session = Session(max_history_turns=10)
    chat(session, "1", "2", "3")
    # budget = 10 - 2 = 8 characters: the new turn (2) + one exchange (4) fits, two (8 + 2) do not
    plan = await session.plan(UserTurn(id="4", text="u4"), 2, 10, count_chars)
    assert texts(plan.messages) == [("user", "u3"), ("assistant", "a3"), ("user", "u4")]


async def test_trimming_reports_how_many_exchanges_were_dropped() -> None:
    """dropped_turns counts the exchanges left out of the plan."""
    session = Session(max_history_turns=10)
    chat(session, "1", "2", "3")
    assert (await session.plan(UserTurn(id="4", text="u4"), 2, 10, count_chars)).dropped_turns == 2


async def test_trimming_drops_the_fewest_exchanges_that_fit_exactly() -> None:
    """A prompt that fills the budget exactly is kept; trimming stops at the first fit."""
    session = Session(max_history_turns=10)
    chat(session, "1", "2", "3", "4", "5")
    # each exchange is 4 characters, the new turn 2: 3 exchanges + turn = 14 = 20 - 6
    plan = await session.plan(UserTurn(id="6", text="u6"), 6, 20, count_chars)
    assert (plan.dropped_turns, plan.prompt_tokens) == (2, 14)


async def test_trimming_with_headroom_frees_that_much_more() -> None:
    """A turn that must drop exchanges drops until a share of the window is free as well; one that fits
    drops none."""
    session = Session(max_history_turns=10)
    chat(session, "1", "2", "3", "4", "5")
    # budget 20 - 6 = 14: two drops leave 3 exchanges + turn = 14; headroom 0.2 of 20 asks for 10: three drops
    plan = await session.plan(UserTurn(id="6", text="u6"), 6, 20, count_chars, headroom=0.2)
    assert (plan.dropped_turns, plan.prompt_tokens) == (3, 10)
    fits = await session.plan(UserTurn(id="6", text="u6"), 6, 40, count_chars, headroom=0.75)
    assert fits.dropped_turns == 0


async def test_headroom_is_at_most_half_the_room_the_history_has() -> None:
    """However large the share, trimming keeps half of what the history could use beside the turn."""
    session = Session(max_history_turns=10)
    chat(session, "1", "2", "3", "4", "5")
    # budget 14, the turn alone 2: the history's room is 12, so at most 6 is freed: 8 asks for four drops
    plan = await session.plan(UserTurn(id="6", text="u6"), 6, 20, count_chars, headroom=0.65)
    assert (plan.dropped_turns, plan.prompt_tokens) == (4, 6)


async def test_image_trimming_has_headroom_too() -> None:
    """A session at its image-bytes limit drops enough images to take a few more turns with images,
    instead of one exchange (and a full prefill) on every such turn."""
    pictures = [png_image((40, 0, 0))] * 7
    one = len(pictures[0].data)
    for headroom, drops in ((0.0, 1), (0.25, 3)):
        session = Session(max_history_turns=10)
        for n in range(5):
            session.record(UserTurn(id=str(n), text="", images=(pictures[n],)), "a", partial=False, epoch=0)
        # six images, room for five: one must go; a quarter of the room (1.25 images) more: three
        turn = UserTurn(id="6", text="", images=(pictures[6],))
        plan = await session.plan(turn, 1, BIG_CONTEXT, count_chars, 5 * one, headroom)
        assert plan.dropped_turns == drops


async def test_trimming_never_drops_the_system_prompt() -> None:
    """However much history is dropped, the system prompt stays first."""
    session = Session(max_history_turns=10, system="system!")
    chat(session, "1", "2", "3")
    plan = await session.plan(UserTurn(id="4", text="u4"), 1, len("system!") + 2 + 1, count_chars)
    assert texts(plan.messages) == [("system", "system!"), ("user", "u4")]
    assert plan.dropped_turns == 3


async def test_single_turn_too_large_is_context_overflow() -> None:
    """A turn that alone cannot fit with max_tokens is refused as context_overflow, naming the window (the
    WebSocket front end adds the turn's id: tests/e2e/test_ws_e2e.py)."""
    session = Session(max_history_turns=10)
    with pytest.raises(GatewayError) as info:
        await session.plan(UserTurn(id="big", text="x" * 100), 10, 100, count_chars)
    assert info.value.code is ErrorCode.CONTEXT_OVERFLOW and "100-token context window" in info.value.message


async def test_system_prompt_counts_towards_context_overflow() -> None:
    """A turn that fits alone but not beside the system prompt is context_overflow."""
    session = Session(max_history_turns=10, system="s" * 50)
    with pytest.raises(GatewayError) as info:
        await session.plan(UserTurn(id="t", text="x" * 50), 1, 100, count_chars)
    assert info.value.code is ErrorCode.CONTEXT_OVERFLOW


async def test_max_tokens_above_context_is_context_overflow() -> None:
    """max_tokens larger than the whole context window leaves no room: context_overflow."""
    with pytest.raises(GatewayError) as info:
        await Session(max_history_turns=10).plan(UserTurn(id="t", text=""), 200, 100, count_chars)
    assert info.value.code is ErrorCode.CONTEXT_OVERFLOW


def test_drop_oldest_removes_exchanges_from_the_front() -> None:
    """drop_oldest(n) removes the n oldest exchanges from history."""
    session = Session(max_history_turns=10)
    chat(session, "1", "2", "3")
    session.drop_oldest(2)
    assert [e.turn.id for e in session.exchanges] == ["3"]


# ---- record, reset, bounds ---------------------------------------------------------------------


def test_record_appends_the_exchange() -> None:
    """record() appends the turn and its reply and returns True."""
    session = Session(max_history_turns=10)
    turn = UserTurn(id="1", text="hi")
    assert session.record(turn, "hello", partial=False, epoch=0) is True
    assert session.exchanges == [Exchange(turn=turn, reply="hello", partial=False, number=1)]


def test_cancelled_reply_is_recorded_as_partial() -> None:
    """A reply cut short by cancel joins history with partial=True."""
    session = Session(max_history_turns=10)
    session.record(UserTurn(id="1", text="hi"), "hel", partial=True, epoch=0)
    assert session.exchanges[0].partial is True and session.exchanges[0].reply == "hel"


async def test_partial_reply_is_sent_back_to_the_model() -> None:
    """A partial reply still appears as the assistant message in later plans."""
    session = Session(max_history_turns=10)
    session.record(UserTurn(id="1", text="hi"), "hel", partial=True, epoch=0)
    plan = await session.plan(UserTurn(id="2", text="go on"), 1, 100, count_chars)
    assert texts(plan.messages)[1] == ("assistant", "hel")


def test_reset_clears_history() -> None:
    """reset() empties the history."""
    session = Session(max_history_turns=10)
    chat(session, "1", "2")
    session.reset()
    assert session.exchanges == []


def test_reset_bumps_the_epoch() -> None:
    """Each reset() increments the epoch."""
    session = Session(max_history_turns=10)
    session.reset()
    session.reset()
    assert session.epoch == 2


def test_late_record_after_reset_is_refused() -> None:
    """A reply from a turn started before reset is not recorded, and record() says so."""
    session = Session(max_history_turns=10)
    started = session.epoch
    session.reset()
    assert session.record(UserTurn(id="1", text="hi"), "late", partial=False, epoch=started) is False
    assert session.exchanges == []


def test_reset_keeps_system_prompt_and_defaults() -> None:
    """reset() clears history only, not the system prompt or sampling defaults."""
    session = Session(max_history_turns=10)
    session.configure("sys", SamplingOptions(temperature=0.3))
    session.reset()
    assert (session.system, session.defaults.temperature) == ("sys", 0.3)


def test_past_max_history_turns_a_share_more_goes_at_once() -> None:
    """With headroom, reaching the cap drops a share of it more, so the next turns keep their opening."""
    session = Session(max_history_turns=8)
    chat(session, *"123456789")
    assert [e.turn.text for e in session.exchanges] == ["u2", "u3", "u4", "u5", "u6", "u7", "u8", "u9"]
    session = Session(max_history_turns=8)
    for n in range(1, 12):
        session.record(UserTurn(id=str(n), text=f"u{n}"), f"a{n}", partial=False, epoch=0, headroom=0.25)
        if n == 9:
            assert [e.turn.text for e in session.exchanges] == ["u4", "u5", "u6", "u7", "u8", "u9"]  # 1 + 2 more
    assert len(session.exchanges) == 8 and session.exchanges[0].turn.text == "u4"  # u10, u11: no drop


def test_history_is_bounded_by_max_history_turns() -> None:
    """Recording beyond max_history_turns drops the oldest exchanges."""
    session = Session(max_history_turns=2)
    chat(session, "1", "2", "3", "4")
    assert [e.turn.id for e in session.exchanges] == ["3", "4"]


# ---- configure ---------------------------------------------------------------------------------


def test_configure_sets_the_system_prompt() -> None:
    """configure() with a system prompt sets it."""
    session = Session(max_history_turns=10)
    session.configure("be brief", SamplingOptions())
    assert session.system == "be brief"


def test_configure_without_system_keeps_it() -> None:
    """configure() with system=None leaves the system prompt as it was."""
    session = Session(max_history_turns=10, system="keep")
    session.configure(None, SamplingOptions(top_k=3))
    assert session.system == "keep"


def test_configure_empty_system_clears_it() -> None:
    """configure() with system="" removes the system prompt."""
    session = Session(max_history_turns=10, system="old")
    session.configure("", SamplingOptions())
    assert session.system is None


def test_configure_merges_options_into_defaults() -> None:
    """configure() changes only the options it sets and keeps earlier ones."""
    session = Session(max_history_turns=10)
    session.configure(None, SamplingOptions(temperature=0.2, top_k=5))
    session.configure(None, SamplingOptions(top_k=9, stop=["END"]))
    assert session.defaults == SamplingOptions(temperature=0.2, top_k=9, stop=["END"])


# ---- continuing from tool results ---------------------------------------------------------------


def called_and_answered(session: Session, result: str) -> UserTurn:
    """One exchange whose reply called a tool, answered with `result`; the empty turn that continues."""
    call = ToolCall("c1", "f", "{}")
    session.record(UserTurn(id="q", text="uq"), "aq", partial=False, epoch=session.epoch, tool_calls=(call,))
    session.add_tool_result("c1", result)
    return session.check_turn(UserTurn(id="go", text=""))


async def test_continuation_keeps_the_exchange_it_continues() -> None:
    """Trimming drops older exchanges but never the one a continuing turn goes on from."""
    session = Session(max_history_turns=10)
    chat(session, "1", "2")
    turn = called_and_answered(session, "r" * 6)
    assert turn.continues
    # the continued exchange is 2 + 2 + 6 = 10 characters; the budget 12 - 2 leaves no room for more
    plan = await session.plan(turn, 2, 12, count_chars)
    assert texts(plan.messages) == [("user", "uq"), ("assistant", "aq"), ("tool", "r" * 6)] and plan.dropped_turns == 2


async def test_continuation_that_cannot_fit_is_context_overflow() -> None:
    """Tool results too big for the window with max_tokens: `context_overflow`, never an empty prompt."""
    session = Session(max_history_turns=10)
    turn = called_and_answered(session, "r" * 100)
    with pytest.raises(GatewayError) as refused:
        await session.plan(turn, 2, 50, count_chars)
    assert refused.value.code is ErrorCode.CONTEXT_OVERFLOW and "tool results" in refused.value.message
