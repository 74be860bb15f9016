"""Tests for gateway.core.session's edits: an edit's reply joins with its message; inserted items reach the prompt."""

from __future__ import annotations

from gateway.core.items import Content, Role
from gateway.core.session import Session, UserTurn
from tests.conversation_support import picture
from tests.unit.core.test_session import BIG_CONTEXT, chat, count_chars, texts


def test_an_edit_and_its_reply_join_beside_the_old_message() -> None:
    """The new version is the old one's sibling, answered by the reply; the old branch stays whole."""
    s = Session(max_history_turns=10)
    chat(s, "one", "two")
    old = s.conversation.path[2]
    assert s.editing(old.id)[-1].text == "aone"  # the path above the old message: nothing changes yet
    assert s.record(UserTurn(id="e", text="deux"), "r-deux", False, s.epoch, item_ids=("u", "r"), edits=old.id)
    assert [(i.id, i.content.text) for i in s.conversation.path[2:]] == [("u", "deux"), ("r", "r-deux")]
    assert [c.content.text for c in s.conversation.children(old.parent)] == ["utwo", "deux"]
    assert [i.content.text for i in s.conversation.switch(old.id)][2:] == ["utwo", "atwo"]


def test_an_edit_whose_message_went_meanwhile_joins_nothing() -> None:
    """A reset since the edit started: the reply is not recorded."""
    s = Session(max_history_turns=10)
    chat(s, "one")
    old = s.conversation.path[0]
    s.reset()
    assert not s.record(UserTurn(id="e", text="uno"), "r", False, s.epoch, edits=old.id)
    assert s.conversation.path == []


async def test_a_note_and_a_lone_message_reach_the_prompt_as_they_stand() -> None:
    """An inserted note is a system message where it stands; a message no reply answers has no empty reply."""
    s = Session(max_history_turns=10)
    chat(s, "one")
    s.insert(None, Content(Role.NOTE, "be kind"))
    s.insert(s.conversation.path[-1].id, Content(Role.USER, "aside"))
    plan = await s.plan(UserTurn(id="t", text="now"), 10, BIG_CONTEXT, count_chars)
    said = [("system", "be kind"), ("user", "uone"), ("assistant", "aone"), ("user", "aside"), ("user", "now")]
    assert texts(plan.messages) == said


def test_delete_takes_a_reply_off_the_path() -> None:
    """Deleting the last reply leaves its message at the path's end."""
    s = Session(max_history_turns=10)
    chat(s, "one")
    s.delete(s.conversation.path[-1].id)
    assert [i.content.text for i in s.conversation.path] == ["uone"] and s.exchanges[0].reply == ""


def test_pictures_only_inactive_branches_show_are_held_until_room_is_needed() -> None:
    """An edit that drops a message's picture keeps it held (on the old branch); room for new images takes it first."""
    s = Session(max_history_turns=10)
    s.record(UserTurn(id="a", text="look", images=(picture("p", 300),)), "a cat", False, s.epoch)
    s.edit(s.conversation.path[0].id, "look again", ())
    held = s.held_image_bytes
    s.make_image_room(1000)
    kept = s.held_image_bytes
    s.make_image_room(100)
    assert (s.image_bytes, held, kept, s.held_image_bytes) == (0, 300, 300, 0)
    assert [i.content.text for i in s.conversation.path] == ["look again"] and len(s.conversation) == 1
