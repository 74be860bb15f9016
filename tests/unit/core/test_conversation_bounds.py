"""Tests for the conversation tree's bounds: siblings per item, turns and bytes over every branch."""

from __future__ import annotations

import pytest

from gateway.core.item_tree import Bounds
from gateway.core.items import Content, ConversationError
from gateway.engine.contract import ToolCall
from gateway.errors import ErrorCode
from tests.conversation_support import chat, picture, said, tree


def test_bounds_out_of_range_are_refused() -> None:
    """No turn or no sibling allowed is a configuration error."""
    with pytest.raises(ValueError):
        Bounds(max_turns=0, max_image_bytes=10, max_siblings=1)
    with pytest.raises(ValueError):
        Bounds(max_turns=1, max_image_bytes=10, max_siblings=0)


def test_past_max_siblings_the_least_recently_active_sibling_goes() -> None:
    """A third reply to one message removes the sibling seen longest ago, not the oldest made."""
    t = tree(Bounds(max_turns=100, max_image_bytes=10_000, max_siblings=2))
    chat(t, "1")  # i1, i2
    t.attach("i1", Content.reply("b"))  # i3
    t.switch("i2")  # a1 seen again: b is now the one seen longest ago
    t.attach("i1", Content.reply("c"))  # i4
    assert [c.content.text for c in t.children("i1")] == ["a1", "c"]


def test_siblings_go_with_everything_below_them() -> None:
    """A sibling removed for the cap takes its branch with it."""
    t = tree(Bounds(max_turns=100, max_image_bytes=10_000, max_siblings=1))
    chat(t, "1", "2")
    t.edit("i1", "again")
    assert len(t) == 1 and said(t) == ["again"]


def test_one_sibling_means_regenerate_replaces() -> None:
    """With max_siblings 1 a regenerated reply takes the old one's place."""
    t = tree(Bounds(max_turns=100, max_image_bytes=10_000, max_siblings=1))
    chat(t, "1")
    t.attach(t.regenerate().id, Content.reply("new"))
    assert said(t) == ["u1", "new"] and len(t) == 2


def test_inactive_branches_go_before_active_turns() -> None:
    """Over max_turns, the inactive branch goes and the active path keeps every turn."""
    t = tree(Bounds(max_turns=3, max_image_bytes=10_000, max_siblings=8))
    chat(t, "1", "2")
    t.attach("i3", Content.reply("b2"))  # a third reply: a2 is inactive
    assert t.turns == 3
    chat(t, "3")
    assert said(t) == ["u1", "a1", "u2", "b2", "u3", "a3"] and "i4" not in t


def test_the_least_recently_active_branch_goes_first() -> None:
    """Of two inactive branches, the one seen longest ago goes."""
    t = tree(Bounds(max_turns=3, max_image_bytes=10_000, max_siblings=8))
    chat(t, "1")  # i1, i2
    t.attach("i1", Content.reply("b"))  # i3
    t.attach("i1", Content.reply("c"))  # i4
    t.switch("i2")  # a1 seen: b is the branch seen longest ago
    t.append(Content.user("u2"))
    t.append(Content.reply("a2"))
    assert [c.content.text for c in t.children("i1")] == ["a1", "c"]


def test_with_no_inactive_branch_the_oldest_turn_goes() -> None:
    """Over max_turns on one branch, the active path loses its first turn, whole."""
    t = tree(Bounds(max_turns=2, max_image_bytes=10_000, max_siblings=8))
    chat(t, "1", "2", "3")
    assert said(t) == ["u2", "a2", "u3", "a3"] and t.path[0].parent is None


def test_trim_extra_frees_room_for_the_next_turns() -> None:
    """Once the active path must be trimmed, trim_extra more turns go with the first."""
    t = tree(Bounds(max_turns=3, max_image_bytes=10_000, max_siblings=8, trim_extra=1))
    chat(t, "1", "2", "3", "4")
    assert said(t) == ["u3", "a3", "u4", "a4"]
    chat(t, "5")
    assert said(t) == ["u3", "a3", "u4", "a4", "u5", "a5"]


def test_a_turn_with_tool_results_goes_whole() -> None:
    """Trimming never leaves a reply's calls or results without their reply."""
    t = tree(Bounds(max_turns=2, max_image_bytes=10_000, max_siblings=8))
    t.append(Content.user("u"))
    t.append(Content.reply("a"))
    t.append(Content.tool_call(ToolCall("c1", "f", "{}")))
    t.append(Content.tool_result("c1", "r"))
    t.append(Content.reply("went on"))  # a turn of its own
    chat(t, "2")
    assert said(t) == ["went on", "u2", "a2"]


def test_a_picture_shown_twice_counts_once() -> None:
    """An edit that keeps the images, and the same picture sent again, hold its bytes once."""
    t = tree()
    t.append(Content.user("look", (picture("p", 500),)))
    t.edit("i1", "look again")
    t.append(Content.reply("ok"))
    t.append(Content.user("and this", (picture("p", 500),)))
    assert t.image_bytes == 500
    assert t.path[-1].content.images[0] is t.path[0].content.images[0]


def test_over_max_image_bytes_the_oldest_go() -> None:
    """The oldest turns go until the pictures fit max_image_bytes."""
    t = tree(Bounds(max_turns=100, max_image_bytes=1_000, max_siblings=8))
    t.append(Content.user("one", (picture("p", 600),)))
    t.append(Content.reply("a"))
    t.append(Content.user("two", (picture("q", 600),)))
    assert said(t) == ["two"] and t.bytes == 603 and t.image_bytes == 600


def test_a_picture_goes_when_no_item_shows_it() -> None:
    """Deleting the last item that shows a picture frees its bytes."""
    t = tree()
    t.append(Content.user("look", (picture("p", 500),)))
    t.append(Content.reply("ok"))
    t.delete("i1")
    assert t.image_bytes == 0 and t.bytes == 2


def test_a_turn_whose_pictures_pass_max_image_bytes_is_too_large() -> None:
    """A message, or an edit of one, whose pictures alone pass the bound is refused and changes nothing."""
    t = tree(Bounds(max_turns=100, max_image_bytes=100, max_siblings=8))
    t.append(Content.user("small", (picture("p", 60),)))
    for change in (
        lambda: t.append(Content.user("big", (picture("q", 101),))),
        lambda: t.edit("i1", images=(picture("r", 101),)),
    ):
        with pytest.raises(ConversationError) as raised:
            change()
        assert raised.value.code is ErrorCode.TOO_LARGE and said(t) == ["small"]
