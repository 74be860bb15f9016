"""A turn running at a crash rejoins its restored conversation where it belongs: a regenerate beside the reply
it was replacing, an edit's reply after the new version of the message, a plain turn at the end."""

from __future__ import annotations

from gateway.core.conversation_record import encode
from gateway.core.exchange import PendingTurn, UserTurn
from gateway.core.items import Role
from gateway.core.session import Session
from gateway.core.store.base import SessionRecord, decode_pending, encode_pending, encode_turn
from tests.conversation_support import chat, tree


def restored(pending: PendingTurn) -> Session:
    """The session a store rebuilds from a three-exchange conversation (items i1..i6) and `pending`."""
    conversation = tree()
    chat(conversation, "1", "2", "3")
    record = SessionRecord(id="s", token_hash="h", owner="", tree=encode(conversation), pending=pending)
    return record.session(max_history_turns=10)


def texts(session: Session) -> list[tuple[Role, str, bool]]:
    return [(item.role, item.content.text, item.content.partial) for item in session.conversation.path]


def test_a_pending_turn_keeps_where_it_joins_through_encoding() -> None:
    """The pending blob holds the turn and the item it joins by; one stored before that decodes as a plain turn."""
    pending = decode_pending(encode_pending(PendingTurn(UserTurn("t9", "again"), answers="i3", edits=None)))
    assert (pending.turn.id, pending.turn.text, pending.answers, pending.edits) == ("t9", "again", "i3", None)
    old = decode_pending(encode_turn(UserTurn("t9", "hi")))
    assert (old.turn.text, old.answers, old.edits) == ("hi", None, None)


def test_a_regenerate_rejoins_beside_the_reply_it_replaced() -> None:
    """A regenerate of the second reply (i4, answering i3) rejoins as i4's sibling, partial and empty; i4 stays."""
    session = restored(PendingTurn(UserTurn("t9", "u2"), answers="i3"))
    tree = session.conversation
    partial = tree.path[-1]
    assert [i.id for i in tree.path[:3]] == ["i1", "i2", "i3"] and len(tree.path) == 4
    assert (partial.parent, partial.content.text, partial.content.partial) == ("i3", "", True)
    assert "i4" in tree and tree.get("i4").parent == "i3"


def test_an_edit_rejoins_after_the_new_version_of_its_message() -> None:
    """An edit of the second message (i3) rejoins as its new version, answered by a partial empty reply."""
    session = restored(PendingTurn(UserTurn("t9", "u2 edited"), edits="i3"))
    assert texts(session)[1:] == [(Role.ASSISTANT, "a1", False), (Role.USER, "u2 edited", False), (Role.ASSISTANT, "", True)]
    assert session.conversation.path[2].parent == "i2" and "i3" in session.conversation


def test_a_plain_turn_or_one_whose_item_is_gone_rejoins_at_the_end() -> None:
    """A plain turn, and a regenerate of an item no longer stored, join the active path's end."""
    for pending in (PendingTurn(UserTurn("t9", "u4")), PendingTurn(UserTurn("t9", "u4"), answers="gone1")):
        assert texts(restored(pending))[-2:] == [(Role.USER, "u4", False), (Role.ASSISTANT, "", True)]
