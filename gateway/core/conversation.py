"""A conversation as a tree of items: edits and regenerations branch it, one active path is what the model sees."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from gateway.core.item_tree import Bounds, IdSource, ItemTree, random_id
from gateway.core.items import TOOLS, Content, ConversationError, Item, Role, invalid, turn_starts
from gateway.engine.contract import ChatImage
from gateway.errors import ErrorCode


class Conversation(ItemTree):
    """The operations on the tree (see `ItemTree` for its invariant and bounds). Each checks its
    preconditions and raises `ConversationError` (`not_found`, `invalid_field`, `too_large`) before it
    changes anything; refusing a change while a turn runs (`busy`) is the caller's."""

    def append(self, content: Content, item_id: str | None = None) -> Item:
        """A new item at the end of the active path: a turn's message, its reply, a call, a result."""
        return self.attach(self._path[-1] if self._path else None, content, item_id)

    def attach(self, parent: str | None, content: Content, item_id: str | None = None) -> Item:
        """A new child of `parent` (None: a new root), made the active path's end, with id `item_id` (one
        from `fresh_id`) or a new one. What was active below `parent` stays as an inactive branch: so a
        regenerated reply and an edited message become siblings."""
        self._check_place(parent, content)
        leaf = self._path[-1] if self._path else None
        base = list(self._path) if parent == leaf else [item.id for item in self.path_to(parent)]
        if content.images:
            self._refuse_oversized([*(self._items[i].content for i in base), content])
        item = self._add(parent, content, item_id=item_id)
        self._activate([*base, item.id])
        self._cap_siblings(parent)
        self._fit()
        return item

    def regenerate(self, item_id: str | None = None) -> Item:
        """The item that a new reply replacing `item_id` (default: the active path's last reply) answers.
        Nothing changes until that reply is attached to it, so a turn that fails leaves no trace."""
        reply = self.get(item_id) if item_id is not None else self._last_reply()
        if reply.role is not Role.ASSISTANT:
            raise invalid(f"item {reply.id!r} is not a reply")
        if reply.parent is None:
            raise invalid(f"reply {reply.id!r} opens the conversation: it answers nothing")
        return self._items[reply.parent]

    def editing(self, item_id: str) -> Item:
        """User item `item_id`, which a new version is about to replace. Nothing changes until it joins (`edit`)."""
        old = self.get(item_id)
        if old.role is not Role.USER:
            raise invalid(f"item {item_id!r} is not a user message")
        return old

    def edit(
        self,
        item_id: str,
        text: str | None = None,
        images: tuple[ChatImage, ...] | None = None,
        turn_id: str | None = None,
        new_id: str | None = None,
    ) -> Item:
        """A new sibling of user item `item_id` with `text` and `images` (each kept where None), made active,
        with id `new_id` (one from `fresh_id`) or a new one; everything after the old one stays on the old branch."""
        old = self.editing(item_id)
        content = old.content
        text = content.text if text is None else text
        content = replace(content, text=text, images=content.images if images is None else images, turn_id=turn_id)
        return self.attach(old.parent, content, new_id)

    def truncate(self, item_id: str, chars: int) -> Item:
        """Reply `item_id` keeps its first `chars` characters (code points), marked partial."""
        item = self.get(item_id)
        if item.role is not Role.ASSISTANT:
            raise invalid(f"item {item_id!r} is not a reply")
        text = item.content.text
        if not 0 <= chars <= len(text):
            raise invalid(f"chars must be from 0 to {len(text)}, the reply's length")
        if chars == len(text):
            return item
        cut = replace(item, content=replace(item.content, text=text[:chars], partial=True))
        self._text_bytes += cut.content.text_bytes - item.content.text_bytes
        self._items[item_id] = cut
        return cut

    def insert(self, after: str | None, content: Content) -> Item:
        """A user message, reply or note on the active path right after `after` (None: first); the item
        that followed it there follows the new one, and no reply is made."""
        if content.role in TOOLS:
            raise invalid("tool calls and results join with their reply, not by insert")
        at = self._path_index(after)
        follower = self._path[at + 1] if at + 1 < len(self._path) else None
        if follower is not None and self._items[follower].role in TOOLS:
            raise invalid(f"item {after!r} is followed by its reply's tool calls: insert after them")
        self._check_place(after, content)
        if content.images:
            contents = [self._items[i].content for i in self._path]
            self._refuse_oversized([*contents[: at + 1], content, *contents[at + 1 :]])
        siblings = self._children[after]
        item = self._add(after, content, slot=siblings.index(follower) if follower is not None else None)
        if follower is not None:
            siblings.remove(follower)
            self._items[follower] = replace(self._items[follower], parent=item.id)
            self._children[item.id].append(follower)
        self._activate([*self._path[: at + 1], item.id, *self._path[at + 1 :]])
        self._fit()
        return item

    def delete(self, item_id: str) -> list[str]:
        """Item `item_id` leaves the active path (a reply with its calls and results, and the inactive
        branches below them); what followed takes its place, and where nothing did, the path goes on down
        the most recently active branch that is left (a deleted reply shows its sibling). Returns the ids of
        every item removed."""
        at = self._path_index(item_id)
        item = self._items[item_id]
        if item.role in TOOLS:
            raise invalid("a tool call or result goes with its reply: delete the reply")
        end = at + 1
        while item.role is Role.ASSISTANT and end < len(self._path) and self._items[self._path[end]].role in TOOLS:
            end += 1
        run, follower = self._path[at:end], self._path[end] if end < len(self._path) else None
        removed = []
        for i in run:  # the inactive branches below the run go with it
            for child in [c for c in self._children[i] if c not in (*run, follower)]:
                removed += self._remove(child)
        siblings = self._children[item.parent]
        slot = siblings.index(item_id)
        for i in run:
            self._forget(i)
        if follower is None:
            del siblings[slot]
        else:
            siblings[slot] = follower
            self._items[follower] = replace(self._items[follower], parent=item.parent)
        self._activate(self._descend([*self._path[:at], *self._path[end:]]))
        return [*run, *removed]

    def switch(self, item_id: str) -> list[Item]:
        """Make the path through `item_id` active: below it, the most recently active branch at each step."""
        self._activate(self._descend([item.id for item in self.path_to(item_id)]))
        return self.path

    def fork(self, item_id: str | None = None) -> Conversation:
        """A new conversation holding the path to `item_id` (default: the active path) with the same ids."""
        path = self.path_to(item_id) if item_id is not None else self.path
        return Conversation.rebuild(
            self.bounds, [(i, self._touched[i.id]) for i in path], [i.id for i in path], self._clock, self._new_id
        )

    def drop_turns(self, count: int) -> list[str]:
        """The active path's first `count` turns go, with every branch that does not run through what stays
        (as gateway/session.py's `drop_oldest`, for a prompt to fit the context window); the ids removed."""
        starts = turn_starts([item.role for item in self.path])
        if count >= len(starts):
            removed = [item.id for item, _ in self.walk()]
            self.clear()
            return removed
        return self._cut_before(starts[count]) if count > 0 else []

    @classmethod
    def rebuild(
        cls, bounds: Bounds, items: Iterable[tuple[Item, int]], path: list[str], clock: int, new_id: IdSource = random_id
    ) -> Conversation:
        """A conversation from its items (each parent first, siblings in order) with their `touched` clocks,
        trimmed to `bounds`; raises ValueError where they do not form one."""
        tree = cls(bounds, new_id)
        tree._load(items, path, clock)
        return tree

    # ---- preconditions -----------------------------------------------------------------------------

    def _check_place(self, parent: str | None, content: Content) -> None:
        above = self.get(parent).role if parent is not None else None
        if content.role is Role.TOOL_CALL:
            if above not in (Role.ASSISTANT, Role.TOOL_CALL):
                raise invalid("a tool call follows its reply or another call of it")
        elif content.role is Role.TOOL_RESULT:
            calls, answered = self._tool_run(parent)
            if content.call_id not in calls or content.call_id in answered:
                problem = "was already answered" if content.call_id in answered else "is not a call of the last reply"
                raise ConversationError(ErrorCode.NOT_FOUND, f"tool call {content.call_id!r} {problem}")
        elif pending := self.pending_calls(parent):
            raise invalid(f"answer tool calls {', '.join(pending)} with tool_result first")

    def _refuse_oversized(self, path: list[Content]) -> None:
        """Refuse a path with a turn whose pictures alone pass the bound. Only a new item with pictures can
        make one (so only such an item is checked): every turn the tree holds fits already."""
        starts = turn_starts([c.role for c in path])
        for start, end in zip(starts, [*starts[1:], len(path)]):
            turn = path[start:end]
            pictures = {i.sha256: len(i.data) for c in turn for i in c.images}
            if sum(pictures.values()) > self.bounds.max_image_bytes:
                limit = self.bounds.max_image_bytes
                raise ConversationError(ErrorCode.TOO_LARGE, f"an exchange's images are at most {limit} bytes")

    def _last_reply(self) -> Item:
        replies = [i for i in self.path if i.role is Role.ASSISTANT]
        if not replies:
            raise ConversationError(ErrorCode.NOT_FOUND, "the conversation has no reply yet")
        return replies[-1]

    def _path_index(self, item_id: str | None) -> int:
        if item_id is None:
            return -1
        if self.get(item_id).id not in self._path:
            raise invalid(f"item {item_id!r} is not on the active branch: switch to it first")
        return self._path.index(item_id)
