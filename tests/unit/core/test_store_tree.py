"""Tests for gateway.core.store.tree_sync: a write carries only what changed; a failed one makes the next full."""

from __future__ import annotations

from gateway.core.items import Content
from gateway.core.store.tree_sync import StoredTree
from tests.conversation_support import chat, picture, tree


def test_the_first_change_is_full_and_the_next_carry_only_new_items() -> None:
    """All items at first; after a turn, its two items only; nothing gone."""
    t, stored = tree(), StoredTree()
    chat(t, "1", "2")
    first, snapshot = stored.change(t)
    stored.saved(snapshot)
    chat(t, "3")
    second, _ = stored.change(t)
    assert first.full and sorted(first.items) == ["i1", "i2", "i3", "i4"]
    assert not second.full and sorted(second.items) == ["i5", "i6"] and second.gone_items == []


def test_a_change_to_an_earlier_exchange_writes_that_item_alone() -> None:
    """Truncating the first reply rewrites only it (and the head); a regenerate adds one item."""
    t, stored = tree(), StoredTree()
    chat(t, "1", "2", "3")
    stored.saved(stored.change(t)[1])
    t.truncate("i2", 1)
    t.attach("i3", Content.reply("again"))
    change, _ = stored.change(t)
    assert sorted(change.items) == ["i2", "i7"] and change.gone_items == [] and not change.pictures


def test_deleted_items_and_unshown_pictures_are_gone_and_a_picture_is_written_once() -> None:
    """A picture shown by two items is written once; deleting both items deletes it."""
    t, stored = tree(), StoredTree()
    t.append(Content.user("look", (picture("p"),)))
    t.append(Content.reply("a cat"))
    t.append(Content.user("again", (picture("p"),)))
    first, snapshot = stored.change(t)
    stored.saved(snapshot)
    t.delete("i3")
    t.delete("i1")
    second, _ = stored.change(t)
    assert list(first.pictures) == [picture("p").sha256]
    assert sorted(second.gone_items) == ["i1", "i3"] and second.gone_pictures == [picture("p").sha256]


def test_after_a_failed_write_the_next_change_is_full() -> None:
    """`lost`: the store may lack anything, so everything is written again."""
    t, stored = tree(), StoredTree()
    chat(t, "1")
    stored.saved(stored.change(t)[1])
    stored.lost()
    change, _ = stored.change(t)
    assert change.full and sorted(change.items) == ["i1", "i2"]


def test_a_tree_just_loaded_writes_only_its_head_and_what_follows() -> None:
    """`loaded`: the store holds the tree already, so the next change writes no item and no picture of
    it (a revived session is not rewritten), only the turn that follows."""
    t, stored = tree(), StoredTree()
    t.append(Content.user("look", (picture("p"),)))
    t.append(Content.reply("a cat"))
    stored.loaded(t)
    unchanged, _ = stored.change(t)
    chat(t, "more")
    after, _ = stored.change(t)
    assert not unchanged.full and not unchanged.items and not unchanged.pictures and not unchanged.gone_items
    assert not after.full and sorted(after.items) == ["i3", "i4"] and not after.pictures
