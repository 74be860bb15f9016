"""A session's conversation tree as a store keeps it, item by item: each write carries only what changed."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from gateway.core.conversation import Conversation
from gateway.core.conversation_record import head, image_record, item_record
from gateway.core.items import Item
from gateway.engine.contract import ChatImage


@dataclass(frozen=True)
class TreeChange:
    """What a store writes of one tree: its head (rewritten each time: the order, the clocks, the path), the
    items and pictures new or changed since the last write (by id, by sha256) and those gone. `full`: these
    are all of them, so whatever else the store holds for the session (a flat history of before) goes."""

    head: bytes
    items: dict[str, bytes] = field(default_factory=dict)
    gone_items: list[str] = field(default_factory=list)
    pictures: dict[str, bytes] = field(default_factory=dict)
    gone_pictures: list[str] = field(default_factory=list)
    full: bool = True
    bytes: int = 0  # the tree's text and pictures, each picture once: what the store's size bound counts


@dataclass(frozen=True)
class Snapshot:
    """The items and pictures a change leaves stored, once its write has worked."""

    items: dict[str, Item]
    pictures: frozenset[str]


class StoredTree:
    """What this process last wrote of one session's tree. Items are immutable and replaced on any change, so
    one that is still the object written is still stored as it is. Until a write is known to have worked (at
    first, and after a failed one), the next change is full."""

    def __init__(self) -> None:
        self._written: Snapshot | None = None

    def change(self, tree: Conversation) -> tuple[TreeChange, Snapshot]:
        """The change that makes the store hold `tree`, and what it holds then (for `saved`)."""
        now = _snapshot(tree)
        items, pictures = now.items, _pictures(now.items)
        was = self._written or Snapshot({}, frozenset())
        change = TreeChange(
            head=_encode(head(tree)),
            items={i: _encode(item_record(item)) for i, item in items.items() if was.items.get(i) is not item},
            gone_items=[i for i in was.items if i not in items],
            pictures={sha: _encode(image_record(image)) for sha, image in pictures.items() if sha not in was.pictures},
            gone_pictures=[sha for sha in was.pictures if sha not in pictures],
            full=self._written is None,
            bytes=tree.bytes,
        )
        return change, now

    def loaded(self, tree: Conversation) -> None:
        """`tree` as just read from the store, so held there already: the next change carries only what changes
        from here (a revived session's first write rewrote all of it, 15 MiB of pictures on each resume)."""
        self._written = _snapshot(tree)

    def saved(self, snapshot: Snapshot) -> None:
        self._written = snapshot

    def lost(self) -> None:
        """A write failed: what the store holds is not known, so the next change is full."""
        self._written = None


_encode = msgspec.msgpack.encode


def _snapshot(tree: Conversation) -> Snapshot:
    items = {item.id: item for item, _ in tree.walk()}
    return Snapshot(items, frozenset(_pictures(items)))


def _pictures(items: dict[str, Item]) -> dict[str, ChatImage]:
    return {image.sha256: image for item in items.values() for image in item.content.images}
