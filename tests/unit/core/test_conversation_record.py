"""Tests for gateway.core.conversation_record: a conversation stored and loaded again is the same, every branch."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from gateway.core.conversation import Conversation
from gateway.core.conversation_record import ConversationRecord, decode, dump, encode, load
from gateway.core.item_tree import Bounds
from gateway.core.items import Content
from gateway.engine.contract import ToolCall
from tests.conversation_support import ROOMY, chat, picture, tree


def branched() -> Conversation:
    """Two edits, a regenerated reply, a truncated one, a picture shown twice, a call and its result."""
    t = tree()
    t.append(Content.user("look", (picture("p", 300),), turn_id="t1"))
    t.append(Content.reply("a cat, sitting"))
    t.edit("i1", "look closer")
    t.append(Content.reply("a cat"))
    t.attach("i3", Content.reply("a small cat"))
    t.truncate("i5", 7)
    t.append(Content.user("weather?", (picture("p", 300),)))
    t.append(Content.reply(""))
    t.append(Content.tool_call(ToolCall("c1", "weather", "{}")))
    t.append(Content.tool_result("c1", "rain"))
    t.switch("i4")
    return t


def test_a_stored_conversation_loads_as_it_was() -> None:
    """Items, branches, the active path, clocks and what each item says all come back."""
    t = branched()
    again = load(dump(t), ROOMY)
    assert encode(again) == encode(t)
    places = [[(p.item.id, p.siblings, p.index) for p in c.history()] for c in (again, t)]
    assert places[0] == places[1] and again.bytes == t.bytes and again.turns == t.turns


def test_a_loaded_conversation_goes_on_as_the_original_would() -> None:
    """Switching after a load follows the same most recently active branch, and new ids stay unique."""
    t = branched()
    again = load(dump(t), ROOMY)
    assert [i.id for i in again.switch("i1")] == [i.id for i in t.switch("i1")]
    assert again.append(Content.user("next")).id not in t


def test_each_picture_is_stored_once() -> None:
    """A picture that two items show is one entry of the record, and one object after loading."""
    record = encode(branched())
    assert len(record.images) == 1
    again = decode(record, ROOMY)
    shown = [item.content.images[0] for item, _ in again.walk() if item.content.images]
    assert len(shown) == 3 and all(image is shown[0] for image in shown)


def test_a_record_under_smaller_bounds_is_trimmed() -> None:
    """Loading with fewer turns allowed keeps the bounds: inactive branches go first."""
    t = tree()
    chat(t, "1", "2", "3")
    t.attach("i1", Content.reply("b"))
    t.switch("i2")
    again = load(dump(t), Bounds(max_turns=3, max_image_bytes=10_000, max_siblings=8))
    assert again.turns == 3 and [c.content.text for c in again.children("i1")] == ["a1"]


def test_a_record_whose_last_turn_no_longer_fits_loads_empty() -> None:
    """A newest exchange whose pictures pass a lowered image bound cannot be kept whole: nothing is."""
    t = tree()
    chat(t, "1")
    t.append(Content.user("look", (picture("p", 500),)))
    again = load(dump(t), Bounds(max_turns=100, max_image_bytes=400, max_siblings=8))
    assert len(again) == 0 and again.path == [] and again.image_bytes == 0


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda r: r.items.reverse(),  # a child before its parent
        lambda r: r.items.append(r.items[0]),  # an id twice
        lambda r: r.path.pop(0),  # a path that starts below a root
        lambda r: r.path.pop(),  # a path that ends above a leaf
        lambda r: r.images.clear(),  # a picture an item shows is missing
        lambda r: setattr(r, "clock", 1),  # items from after the record's clock
        lambda r: setattr(r, "version", 99),
    ],
)
def test_a_record_that_forms_no_conversation_is_refused(corrupt: Callable[[ConversationRecord], object]) -> None:
    """Each inconsistency raises ValueError rather than loading a broken tree."""
    record = msgspec.msgpack.decode(dump(branched()), type=ConversationRecord)
    corrupt(record)
    with pytest.raises(ValueError):
        decode(record, ROOMY)


def test_bytes_that_are_no_record_are_a_decode_error() -> None:
    """Garbage is refused by the record's schema."""
    with pytest.raises(msgspec.DecodeError):
        load(b"\x93\x01\x02\x03", ROOMY)
