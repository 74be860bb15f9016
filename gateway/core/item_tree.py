"""The conversation tree's storage and bounds: items, children, the active path, and trimming to fit."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from gateway.core.items import OPENERS, TOOLS, Content, Item, Placed, Role, not_found, turn_starts
from gateway.engine.contract import ChatImage

IdSource = Callable[[], str]


def random_id() -> str:
    """Eight URL-safe characters (48 random bits): an id names an item, it grants nothing."""
    return secrets.token_urlsafe(6)


@dataclass(frozen=True)
class Bounds:
    max_turns: int  # replies, and messages no reply answers, on every branch
    max_image_bytes: int  # pictures on every branch, each once (text is bounded by turns, as today)
    max_siblings: int  # items with the same parent
    # Turns trimmed beyond the need once the active path must be: each trim changes the prompt's opening,
    # so KV held from earlier turns no longer applies; one at a time would cost every turn its held KV.
    trim_extra: int = 0

    def __post_init__(self) -> None:
        if self.max_turns < 1 or self.max_siblings < 1 or self.max_image_bytes < 0 or self.trim_extra < 0:
            raise ValueError(f"bounds out of range: {self}")


class ItemTree:
    """Items linked to their parents, one active path, and the bounds kept; `Conversation` adds the operations.

    Invariant, after every operation: every item's parent is in the tree and lists it once among its
    children; the active path runs from a root, each item the parent of the next, to an item with no
    children (it is empty only when the tree is); no parent has more than `max_siblings` children; the
    tree holds at most `max_turns` turns and `max_image_bytes` of pictures, every branch counted (a turn
    is a reply, or a message or note no reply answers; a picture counts once, however many items show
    it). Over a bound, the least recently active inactive branch goes first (a branch: an item off the
    active path whose parent is on it, with everything below it); with none left, the active path's
    oldest turns go, whole. The newest turn always stays: a change that would make a turn of the active
    path too large for `max_image_bytes` on its own is refused (only a record loaded under smaller bounds
    can hold one, and then nothing is kept)."""

    def __init__(self, bounds: Bounds, new_id: IdSource = random_id) -> None:
        self.bounds = bounds
        self._new_id = new_id
        self._items: dict[str, Item] = {}
        self._children: dict[str | None, list[str]] = {None: []}
        self._path: list[str] = []
        self._touched: dict[str, int] = {}  # the clock when each item was last on the active path
        self._clock = 0
        self._images: dict[str, tuple[ChatImage, int]] = {}  # sha256: the picture, how many items show it
        self._text_bytes = 0
        self._image_bytes = 0

    # ---- reading ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def get(self, item_id: str) -> Item:
        if item_id not in self._items:
            raise not_found(item_id)
        return self._items[item_id]

    @property
    def path(self) -> list[Item]:
        """The active path, root first."""
        return [self._items[i] for i in self._path]

    @property
    def clock(self) -> int:
        return self._clock

    @property
    def bytes(self) -> int:
        return self._text_bytes + self._image_bytes

    @property
    def image_bytes(self) -> int:
        return self._image_bytes

    @property
    def turns(self) -> int:
        """Replies, and messages and notes that no reply answers, on every branch."""
        answered = {item.parent for item in self._items.values() if item.content.role is Role.ASSISTANT}
        return sum(
            1
            for i in self._items.values()
            if i.content.role is Role.ASSISTANT or (i.content.role in OPENERS and i.id not in answered)
        )

    def touched(self, item_id: str) -> int:
        return self._touched[item_id]

    def children(self, item_id: str | None) -> list[Item]:
        return [self._items[i] for i in self._children[item_id]]

    def path_to(self, item_id: str | None) -> list[Item]:
        """The items from a root down to `item_id` (none for None)."""
        path = []
        while item_id is not None:
            item = self.get(item_id)
            path.append(item)
            item_id = item.parent
        return path[::-1]

    def history(self) -> list[Placed]:
        """The active path, each item with its siblings' count and its index among them."""
        pairs = zip([None, *self._path], self._path)
        return [Placed(self._items[i], len(self._children[p]), self._children[p].index(i)) for p, i in pairs]

    def pending_calls(self, after: str | None) -> list[str]:
        """Ids of the calls of the reply whose tool items end at `after` that no result answers yet."""
        calls, answered = self._tool_run(after)
        return [call for call in calls if call not in answered]

    def walk(self) -> Iterator[tuple[Item, int]]:
        """Every item with its `touched` clock, each parent before its children, siblings in order."""
        stack = self._children[None][::-1]
        while stack:
            item_id = stack.pop()
            yield self._items[item_id], self._touched[item_id]
            stack += self._children[item_id][::-1]

    def clear(self) -> None:
        for root in list(self._children[None]):
            self._remove(root)
        self._path = []

    # ---- keeping the invariant ---------------------------------------------------------------------

    def _load(self, items: Iterable[tuple[Item, int]], path: list[str], clock: int) -> None:
        """Fill an empty tree from its items (each parent first, siblings in order) with their `touched`
        clocks, then trim it to its bounds; raises ValueError where they do not form one."""
        for item, touched in items:
            if item.id in self._items or item.parent not in self._children or max(item.born, touched) > clock:
                raise ValueError(f"item {item.id!r} is a duplicate, an orphan or from the future")
            self._items[item.id] = replace(item, content=replace(item.content, images=self._hold(item.content.images)))
            self._children[item.id] = []
            self._children[item.parent].append(item.id)
            self._touched[item.id] = touched
            self._text_bytes += item.content.text_bytes
        if not self._is_chain(path):
            raise ValueError("the active path is not a chain from a root to a leaf")
        self._path, self._clock = list(path), clock
        for parent in list(self._children):
            self._cap_siblings(parent)
        self._fit()

    def _cap_siblings(self, parent: str | None) -> None:
        siblings = self._children[parent]
        while len(siblings) > self.bounds.max_siblings:
            self._remove(min((i for i in siblings if i not in self._path), key=self._touched.__getitem__))

    def pictures(self) -> dict[str, int]:
        """Each picture the tree holds, by sha256, and its bytes."""
        return {sha: len(picture.data) for sha, (picture, _) in self._images.items()}

    def drop_branches(self, enough: Callable[[], bool]) -> list[str]:
        """Inactive branches go, the least recently active first, until `enough()` or none is left; the ids removed."""
        removed: list[str] = []
        while not enough() and (branch := self._oldest_branch()) is not None:
            removed += self._remove(branch)
        return removed

    def _oldest_branch(self) -> str | None:
        branches = [c for p, a in zip([None, *self._path], [*self._path, None]) for c in self._children[p] if c != a]
        return min(branches, key=self._touched.__getitem__) if branches else None

    def _fit(self) -> None:
        trimmed = False
        while self.turns > self.bounds.max_turns or self._image_bytes > self.bounds.max_image_bytes:
            if (branch := self._oldest_branch()) is not None:
                self._remove(branch)
                continue
            starts = turn_starts([self._items[i].role for i in self._path])
            if len(starts) == 1:  # only a record loaded under smaller bounds: operations refuse such a turn
                self.clear()
                return
            self._cut_before(starts[min(len(starts) - 1, 1 if trimmed else 1 + self.bounds.trim_extra)])
            trimmed = True

    def _cut_before(self, start: int) -> list[str]:
        """Keep only the active path's item at `start`, now a root, and what is below it; the ids removed."""
        head, first = self._path[:start], self._path[start]
        removed = [r for root in list(self._children[None]) if root != self._path[0] for r in self._remove(root)]
        for i in head:
            for child in [c for c in self._children[i] if c not in self._path]:
                removed += self._remove(child)
        for i in head:
            self._forget(i)
        self._children[None] = [first]
        self._items[first] = replace(self._items[first], parent=None)
        self._path = self._path[start:]
        return [*head, *removed]

    def _is_chain(self, path: list[str]) -> bool:
        if not path:
            return not self._items
        linked = all(c in self._children.get(p, ()) for p, c in zip([None, *path], path))
        return linked and not self._children[path[-1]]

    def _tool_run(self, item_id: str | None) -> tuple[list[str], set[str]]:
        calls: list[str] = []
        answered: set[str] = set()
        item = self._items.get(item_id) if item_id is not None else None
        while item is not None and item.role in TOOLS:
            if item.content.call is not None:
                calls.append(item.content.call.id)
            if item.content.call_id is not None:
                answered.add(item.content.call_id)
            item = self._items.get(item.parent) if item.parent is not None else None
        return calls[::-1], answered

    def _descend(self, path: list[str]) -> list[str]:
        """`path` (the roots where empty) followed down to a leaf, by the most recently active child each step."""
        while kids := self._children[path[-1] if path else None]:
            path.append(max(kids, key=self._touched.__getitem__))
        return path

    def _activate(self, path: list[str]) -> None:
        self._clock += 1
        self._path = path
        for item_id in path:
            self._touched[item_id] = self._clock

    def fresh_id(self) -> str:
        """An id no item has: a caller may name items before they join (a turn's, in `accepted`)."""
        item_id = self._new_id()
        while item_id in self._items:
            item_id = self._new_id()
        return item_id

    def _add(self, parent: str | None, content: Content, slot: int | None = None, item_id: str | None = None) -> Item:
        if item_id is None:
            item_id = self.fresh_id()
        elif item_id in self._items:
            raise ValueError(f"item id {item_id!r} is taken")  # a caller's bug: ids it reserves are fresh
        self._clock += 1
        item = Item(item_id, parent, replace(content, images=self._hold(content.images)), self._clock)
        self._items[item_id], self._children[item_id], self._touched[item_id] = item, [], self._clock
        siblings = self._children[parent]
        siblings.insert(len(siblings) if slot is None else slot, item_id)
        self._text_bytes += content.text_bytes
        return item

    def _remove(self, root: str) -> list[str]:
        """Remove `root` and everything below it; the ids removed."""
        self._children[self._items[root].parent].remove(root)
        removed: list[str] = []
        stack = [root]
        while stack:
            item_id = stack.pop()
            stack += self._children[item_id]
            self._forget(item_id)
            removed.append(item_id)
        return removed

    def _forget(self, item_id: str) -> None:
        """Drop one item's own records; its place in its parent's children is the caller's."""
        item = self._items.pop(item_id)
        del self._children[item_id], self._touched[item_id]
        self._text_bytes -= item.content.text_bytes
        for image in item.content.images:
            held, shown = self._images[image.sha256]
            self._images[image.sha256] = (held, shown - 1)
            if shown == 1:
                del self._images[image.sha256]
                self._image_bytes -= len(image.data)

    def _hold(self, images: tuple[ChatImage, ...]) -> tuple[ChatImage, ...]:
        """The pictures, each as the one the tree holds already where it does: a picture shown again costs nothing."""
        held = []
        for image in images:
            picture, shown = self._images.get(image.sha256, (image, 0))
            self._images[image.sha256] = (picture, shown + 1)
            self._image_bytes += len(image.data) if shown == 0 else 0
            held.append(picture)
        return tuple(held)
