"""Tests for gateway.core.conversation_prompt: a path's messages are exactly what gateway/session.py's history says."""

from __future__ import annotations

from gateway.core import session as flat
from gateway.core.conversation_prompt import prompt_messages, split_turns
from gateway.core.exchanges import from_exchanges
from gateway.core.item_tree import Bounds
from gateway.core.items import Content
from gateway.core.session import Session, UserTurn
from gateway.engine.contract import ChatMessage, ToolCall
from tests.conversation_support import ROOMY, counting_ids, picture, tree

NOW = UserTurn(id="now", text="and now?")


def flat_messages(s: Session, exchanges: list[flat.Exchange], turn: UserTurn) -> list[ChatMessage]:
    """The prompt as the session built it from its exchanges before it read its tree: the reference."""
    messages = [ChatMessage("system", s.system)] if s.system else []
    for exchange in [*exchanges, flat.Exchange(turn=turn, reply="")]:
        if not exchange.turn.continues:
            messages.append(ChatMessage("user", exchange.turn.text, exchange.turn.images))
        messages.append(ChatMessage("assistant", exchange.reply, tool_calls=exchange.tool_calls))
        messages += [ChatMessage("tool", r.content, tool_call_id=r.call_id) for r in exchange.tool_results]
    return messages[:-1]


def tool_session() -> Session:
    """A session with a picture, a partial reply, two calls, their results and a turn that went on from them."""
    s = Session(max_history_turns=100, system="be brief")
    s.record(UserTurn(id="t1", text="what is this?", images=(picture("p"),)), "a cat", False, s.epoch)
    s.record(UserTurn(id="t2", text="longer"), "it is a ca", True, s.epoch)
    calls = (ToolCall("c1", "weather", '{"city": "Oslo"}'), ToolCall("c2", "time", "{}"))
    s.record(UserTurn(id="t3", text="weather and time?"), "let me look", False, s.epoch, tool_calls=calls)
    s.add_tool_result("c1", "rain")
    s.add_tool_result("c2", "noon")
    s.record(s.check_turn(UserTurn(id="t4", text="")), "rain at noon", False, s.epoch)
    return s


def test_a_flat_history_gives_the_sessions_messages() -> None:
    """Pictures, partial replies, calls, results and a turn that went on from them come out as the session has them."""
    s = tool_session()
    t = from_exchanges(s.exchanges, ROOMY, counting_ids())
    messages = [ChatMessage("system", "be brief"), *prompt_messages(t.path), ChatMessage("user", NOW.text)]
    assert messages == flat_messages(s, s.exchanges, NOW)


def test_turns_split_where_exchanges_do() -> None:
    """Dropping a path's oldest turns drops the messages the session drops with its oldest exchanges."""
    s = tool_session()
    turns = split_turns(from_exchanges(s.exchanges, ROOMY, counting_ids()).path)
    assert len(turns) == len(s.exchanges)
    for dropped in range(len(turns)):
        kept = [item for turn in turns[dropped:] for item in turn]
        tail = flat_messages(s, s.exchanges[dropped:], NOW)[1:-1]
        assert prompt_messages(kept) == tail


def test_trimming_keeps_what_the_session_keeps() -> None:
    """With max_turns and trim_extra from the session's settings, the tree holds the session's exchanges."""
    cap, share = 5, 0.4
    s = Session(max_history_turns=cap)
    t = tree(Bounds(max_turns=cap, max_image_bytes=1_000_000, max_siblings=4, trim_extra=flat._headroom(cap, share, cap - 1)))
    for n in range(1, 13):
        s.record(UserTurn(id=str(n), text=f"u{n}"), f"a{n}", False, s.epoch, headroom=share)
        t.append(Content.user(f"u{n}", turn_id=str(n)))
        t.append(Content.reply(f"a{n}", turn_id=str(n)))
        assert prompt_messages(t.path) == flat_messages(s, s.exchanges, NOW)[:-1]


def test_a_note_is_a_system_message_where_it_stands() -> None:
    """An inserted note reads as a system message between the messages around it."""
    t = tree()
    t.append(Content.user("hi"))
    t.append(Content.reply("hello"))
    t.insert(t.path[0].id, Content.note("the user is a child"))
    assert [m.role for m in prompt_messages(t.path)] == ["user", "system", "assistant"]


def test_an_edited_branch_says_only_the_active_path() -> None:
    """After an edit, the messages are those of the new branch, and after a switch back those of the old."""
    t = tree()
    t.append(Content.user("first"))
    t.append(Content.reply("one"))
    t.edit("i1", "second")
    assert [m.text for m in prompt_messages(t.path)] == ["second"]
    t.switch("i2")
    assert [m.text for m in prompt_messages(t.path)] == ["first", "one"]
