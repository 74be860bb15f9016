"""Tests for gateway.core.conversation: each operation on the item tree, its preconditions and its codes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.core.conversation_prompt import prompt_messages
from gateway.core.item_tree import random_id
from gateway.core.items import Content, ConversationError
from gateway.engine.contract import ToolCall
from gateway.errors import ErrorCode
from tests.conversation_support import chat, picture, said, tree

CALL = ToolCall("c1", "lookup", '{"q": 1}')


def refused(code: ErrorCode, call: Callable[..., object], *args: object) -> None:
    """`call(*args)` raises a ConversationError with `code`."""
    with pytest.raises(ConversationError) as raised:
        call(*args)
    assert raised.value.code is code


def test_append_chains_items_on_the_active_path() -> None:
    """Each appended item's parent is the one before it, and the path holds them in order."""
    t = tree()
    chat(t, "1", "2")
    assert said(t) == ["u1", "a1", "u2", "a2"]
    assert [i.parent for i in t.path] == [None, "i1", "i2", "i3"]


def test_random_ids_are_short_and_distinct() -> None:
    """Ids are eight characters and do not repeat."""
    ids = {random_id() for _ in range(10_000)}
    assert len(ids) == 10_000 and {len(i) for i in ids} == {8}


def test_an_id_in_use_is_drawn_again() -> None:
    """An id source that repeats itself never gives two items one id."""
    draws = iter(["x", "x", "y"])
    t = tree()
    t._new_id = lambda: next(draws)
    t.append(Content.user("a"))
    assert t.append(Content.reply("b")).id == "y"


def test_regenerate_names_the_parent_and_changes_nothing() -> None:
    """Regenerating a reply answers from its parent; the tree stays as it was until a reply is attached."""
    t = tree()
    chat(t, "1", "2")
    assert t.regenerate("i4").id == "i3"
    assert said(t) == ["u1", "a1", "u2", "a2"] and len(t) == 4


def test_regenerate_defaults_to_the_last_reply() -> None:
    """Without an id, the active path's last reply is the one regenerated."""
    t = tree()
    chat(t, "1", "2")
    t.append(Content.user("u3"))
    assert t.regenerate().id == "i3"


def test_a_regenerated_reply_becomes_an_active_sibling() -> None:
    """The new reply replaces the old on the active path; the old one stays as its sibling."""
    t = tree()
    chat(t, "1")
    t.attach(t.regenerate().id, Content.reply("again"))
    assert said(t) == ["u1", "again"]
    assert [(p.siblings, p.index) for p in t.history()] == [(1, 0), (2, 1)]
    assert [c.content.text for c in t.children("i1")] == ["a1", "again"]


def test_regenerate_refuses_what_is_no_reply() -> None:
    """A user item is invalid_field, an unknown id not_found, and so is a conversation with no reply."""
    t = tree()
    refused(ErrorCode.NOT_FOUND, t.regenerate)
    chat(t, "1")
    refused(ErrorCode.INVALID_FIELD, t.regenerate, "i1")
    refused(ErrorCode.NOT_FOUND, t.regenerate, "nope")


def test_edit_branches_and_leaves_the_rest_on_the_old_branch() -> None:
    """An edited message is a new sibling at the path's end; what followed the old one stays below it."""
    t = tree()
    chat(t, "1", "2", "3")
    edited = t.edit("i3", "changed")
    assert said(t) == ["u1", "a1", "changed"] and edited.parent == "i2"
    t.switch("i3")
    assert said(t) == ["u1", "a1", "u2", "a2", "u3", "a3"]


def test_edit_keeps_what_it_is_not_given() -> None:
    """Images stay when only the text changes, and the text when only the images do."""
    t = tree()
    image = picture("p")
    t.append(Content.user("look", (image,)))
    assert t.edit("i1", "look again").content.images == (image,)
    assert t.edit("i2", images=()).content.text == "look again"


def test_edit_refuses_what_is_no_user_message() -> None:
    """Editing a reply is invalid_field; an unknown id is not_found."""
    t = tree()
    chat(t, "1")
    refused(ErrorCode.INVALID_FIELD, t.edit, "i2", "x")
    refused(ErrorCode.NOT_FOUND, t.edit, "zz", "x")


def test_truncate_keeps_what_was_shown_and_marks_the_reply_partial() -> None:
    """The reply keeps its first characters, and the next prompt sees only those."""
    t = tree()
    t.append(Content.user("hi"))
    t.append(Content.reply("héllo world"))
    cut = t.truncate("i2", 5)
    assert cut.content.text == "héllo" and cut.content.partial
    assert prompt_messages(t.path)[-1].text == "héllo"
    assert t.bytes == len("hi") + len("héllo".encode())


def test_truncate_refuses_a_length_beyond_the_reply_and_other_items() -> None:
    """Chars past the reply's length, or a user item, are invalid_field."""
    t = tree()
    chat(t, "1")
    refused(ErrorCode.INVALID_FIELD, t.truncate, "i2", 3)
    refused(ErrorCode.INVALID_FIELD, t.truncate, "i1", 1)
    assert t.truncate("i2", 2).content.partial is False  # all of it was shown: nothing changes


def test_insert_splices_an_item_into_the_active_path() -> None:
    """The inserted item follows `after`, and what followed `after` now follows it; no reply is made."""
    t = tree()
    chat(t, "1", "2")
    note = t.insert("i2", Content.note("context"))
    assert said(t) == ["u1", "a1", "context", "u2", "a2"]
    assert t.get("i3").parent == note.id and len(t) == 5


def test_insert_at_the_start() -> None:
    """After None, the item opens the conversation."""
    t = tree()
    chat(t, "1")
    t.insert(None, Content.note("first"))
    assert said(t) == ["first", "u1", "a1"] and t.path[0].parent is None


def test_insert_takes_its_followers_place_among_siblings() -> None:
    """Between a message and the second of its replies, the new item stands second among them."""
    t = tree()
    chat(t, "1")
    t.attach("i1", Content.reply("b"))
    t.insert("i1", Content.reply("inserted"))
    assert [(p.siblings, p.index) for p in t.history()] == [(1, 0), (2, 1), (1, 0)]


def test_insert_refuses_off_the_branch_inside_tool_items_and_tool_roles() -> None:
    """An inactive `after`, a place between a reply and its calls, and a tool role are invalid_field."""
    t = tree()
    chat(t, "1")
    t.attach("i1", Content.reply("b"))
    refused(ErrorCode.INVALID_FIELD, t.insert, "i2", Content.note("x"))
    t.append(Content.tool_call(CALL))
    refused(ErrorCode.INVALID_FIELD, t.insert, "i3", Content.note("x"))
    refused(ErrorCode.INVALID_FIELD, t.insert, "i4", Content.note("x"))  # the call is not answered
    refused(ErrorCode.INVALID_FIELD, t.insert, None, Content.tool_result("c1", "r"))
    refused(ErrorCode.NOT_FOUND, t.insert, "zz", Content.note("x"))


def test_delete_splices_an_item_out() -> None:
    """What followed the deleted item follows its parent, in its place."""
    t = tree()
    chat(t, "1", "2")
    assert t.delete("i3") == ["i3"]
    assert said(t) == ["u1", "a1", "a2"] and t.get("i4").parent == "i2"


def test_switch_follows_the_most_recently_active_branch_below() -> None:
    """Switching to an item makes its path active, and below it the branch last seen there."""
    t = tree()
    chat(t, "1", "2")
    t.attach("i3", Content.reply("b2"))  # i5: a sibling of a2
    t.edit("i1", "other")  # i6: a new first message
    assert t.switch("i1")[-1].id == "i5"
    t.switch("i4")
    assert said(t) == ["u1", "a1", "u2", "a2"]
    assert t.switch("i1")[-1].id == "i4"


def test_switch_refuses_an_unknown_id() -> None:
    """An unknown id is not_found."""
    refused(ErrorCode.NOT_FOUND, tree().switch, "zz")


def test_fork_holds_the_path_up_to_the_item() -> None:
    """The fork has the same ids up to the item and no branches; the original is unchanged."""
    t = tree()
    chat(t, "1", "2")
    t.attach("i1", Content.reply("b"))
    t.switch("i4")
    fork = t.fork("i3")
    assert [i.id for i in fork.path] == ["i1", "i2", "i3"] and len(fork) == 3
    assert [(p.siblings, p.index) for p in fork.history()] == [(1, 0)] * 3
    assert len(t) == 5 and said(t.fork()) == said(t)


def test_history_gives_each_item_its_siblings_count_and_index() -> None:
    """A message edited twice shows 3 siblings, the newest at index 2."""
    t = tree()
    chat(t, "1")
    t.edit("i1", "x")
    t.edit("i1", "y")
    assert [(p.item.content.text, p.siblings, p.index) for p in t.history()] == [("y", 3, 2)]


def test_a_refused_operation_changes_nothing() -> None:
    """After a refusal the tree is exactly as before."""
    t = tree()
    chat(t, "1")
    before = (said(t), len(t), t.bytes, t.clock)
    for call, args in [(t.edit, ("i2", "x")), (t.delete, ("zz",)), (t.truncate, ("i2", 9))]:
        with pytest.raises(ConversationError):
            call(*args)
    assert (said(t), len(t), t.bytes, t.clock) == before


def test_clear_removes_every_branch() -> None:
    """After clear nothing is held, pictures included."""
    t = tree()
    t.append(Content.user("u", (picture("p"),)))
    t.edit("i1", "v")
    t.clear()
    assert len(t) == 0 and t.path == [] and t.bytes == 0


def test_deleting_the_last_reply_shows_its_sibling() -> None:
    """Where nothing followed the deleted item, the active path goes on down the branch left."""
    t = tree()
    chat(t, "1")
    t.attach("i1", Content.reply("b"))
    t.delete("i3")
    assert said(t) == ["u1", "a1"]
    t.edit("i1", "other")
    t.delete("i4")
    assert said(t) == ["u1", "a1"]


def test_drop_turns_keeps_what_follows_and_its_branches() -> None:
    """Dropping the first turns removes them and the branches off them; branches further on stay."""
    t = tree()
    chat(t, "1", "2", "3")
    t.attach("i1", Content.reply("b1"))  # a branch off the first turn
    t.attach("i3", Content.reply("b2"))  # a branch off the second turn
    t.switch("i4")
    t.edit("i1", "other first")
    t.switch("i4")
    assert sorted(t.drop_turns(1)) == ["i1", "i2", "i7", "i9"]
    assert said(t) == ["u2", "a2", "u3", "a3"] and [c.content.text for c in t.children("i3")] == ["a2", "b2"]
    assert len(t.drop_turns(5)) == 5 and len(t) == 0


def test_ids_named_before_the_items_join_are_theirs() -> None:
    """A turn's ids, drawn with fresh_id when it is accepted, are the ids its items get when it ends."""
    t = tree()
    chat(t, "1")
    user_id, reply_id = t.fresh_id(), t.fresh_id()
    t.append(Content.user("u2"), user_id)
    assert t.append(Content.reply("a2"), reply_id).id == reply_id and t.get(user_id).content.text == "u2"
    with pytest.raises(ValueError):
        t.append(Content.user("u3"), user_id)
