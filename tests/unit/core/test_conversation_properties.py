"""Property tests for the conversation tree: random sequences of operations keep its invariant."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.core.conversation import Conversation
from gateway.core.conversation_prompt import prompt_messages
from gateway.core.conversation_record import decode, encode
from gateway.core.item_tree import Bounds
from gateway.core.items import OPENERS, Content, ConversationError, Role
from gateway.engine.contract import ToolCall
from gateway.errors import ErrorCode
from tests.conversation_support import counting_ids, picture

BOUNDS = Bounds(max_turns=6, max_image_bytes=320, max_siblings=2, trim_extra=1)
PICTURES = [picture("p", 100), picture("q", 150), picture("r", 200)]  # q and r together are too large
TEXTS = st.text(max_size=60)
PLACES = st.integers(min_value=0, max_value=1_000)


def check_invariant(tree: Conversation) -> None:
    """The invariant ItemTree's docstring states, computed again from what the tree shows."""
    items = [item for item, _ in tree.walk()]
    assert len({item.id for item in items}) == len(items) == len(tree)
    path = tree.path
    assert [item.parent for item in path] == [None, *(item.id for item in path)][: len(path)]
    assert (not path and not items) or (path and not tree.children(path[-1].id))
    for parent in [None, *(item.id for item in items)]:
        assert len(tree.children(parent)) <= BOUNDS.max_siblings
        assert all(child.parent == parent for child in tree.children(parent))
    pictures = {image.sha256: len(image.data) for item in items for image in item.content.images}
    assert tree.image_bytes == sum(pictures.values()) <= BOUNDS.max_image_bytes
    assert tree.bytes == sum(item.content.text_bytes for item in items) + tree.image_bytes
    answered = {c.parent for c in items if c.role is Role.ASSISTANT}
    turns = sum(1 for i in items if i.role is Role.ASSISTANT or (i.role in OPENERS and i.id not in answered))
    assert tree.turns == turns <= BOUNDS.max_turns
    for placed in tree.history():
        siblings = tree.children(placed.item.parent)
        assert len(siblings) == placed.siblings and siblings[placed.index].id == placed.item.id


class Operations(RuleBasedStateMachine):
    """Every operation with arbitrary arguments: each either keeps the invariant or is refused and changes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.tree = Conversation(BOUNDS, counting_ids())
        self.call_ids = itertools.count(1)

    def pick(self, n: int) -> str:
        """An id of the active path's, or of any item's, or now and then one the tree never had."""
        ids = [item.id for item in self.tree.path] if n % 2 else sorted(item.id for item, _ in self.tree.walk())
        return ids[n // 2 % len(ids)] if ids and n % 7 else "missing"

    def attempt(self, operation: Callable[[], object]) -> None:
        before = encode(self.tree)
        try:
            operation()
        except ConversationError as refusal:
            assert refusal.code in (ErrorCode.NOT_FOUND, ErrorCode.INVALID_FIELD, ErrorCode.TOO_LARGE)
            assert encode(self.tree) == before

    @rule(text=TEXTS, images=st.lists(st.sampled_from(PICTURES), max_size=2))
    def user(self, text: str, images: list[object]) -> None:
        self.attempt(lambda: self.tree.append(Content.user(text, tuple(images))))  # type: ignore[arg-type]

    @rule(text=TEXTS, partial=st.booleans())
    def reply(self, text: str, partial: bool) -> None:
        self.attempt(lambda: self.tree.append(Content.reply(text, partial)))

    @rule()
    def call(self) -> None:
        call = ToolCall(f"c{next(self.call_ids)}", "f", "{}")
        self.attempt(lambda: self.tree.append(Content.tool_call(call)))

    @rule(text=TEXTS, n=PLACES)
    def result(self, text: str, n: int) -> None:
        leaf = self.tree.path[-1].id if self.tree.path else None
        pending = self.tree.pending_calls(leaf) or ["c0"]
        self.attempt(lambda: self.tree.append(Content.tool_result(pending[n % len(pending)], text)))

    @rule(n=PLACES, text=TEXTS)
    def regenerate(self, n: int, text: str) -> None:
        self.attempt(lambda: self.tree.attach(self.tree.regenerate(self.pick(n) if n % 3 else None).id, Content.reply(text)))

    @rule(n=PLACES, text=st.none() | TEXTS, images=st.none() | st.lists(st.sampled_from(PICTURES), max_size=2))
    def edit(self, n: int, text: str | None, images: list[object] | None) -> None:
        pictures = tuple(images) if images is not None else None
        self.attempt(lambda: self.tree.edit(self.pick(n), text, pictures))  # type: ignore[arg-type]

    @rule(n=PLACES, chars=PLACES)
    def truncate(self, n: int, chars: int) -> None:
        item_id = self.pick(n)
        length = len(self.tree.get(item_id).content.text) if item_id in self.tree else 0
        self.attempt(lambda: self.tree.truncate(item_id, chars % (length + 2) - 1))  # -1 and length + 1 are refused

    @rule(n=PLACES, role=st.sampled_from(list(Role)), text=TEXTS)
    def insert(self, n: int, role: Role, text: str) -> None:
        self.attempt(lambda: self.tree.insert(self.pick(n) if n % 5 else None, Content(role, text)))

    @rule(n=PLACES)
    def delete(self, n: int) -> None:
        self.attempt(lambda: self.tree.delete(self.pick(n)))

    @rule(n=PLACES)
    def switch(self, n: int) -> None:
        self.attempt(lambda: self.tree.switch(self.pick(n)))

    @rule(count=st.integers(min_value=0, max_value=3))
    def drop_turns(self, count: int) -> None:
        self.attempt(lambda: self.tree.drop_turns(count))

    @rule(n=PLACES)
    def fork(self, n: int) -> None:
        item_id = self.pick(n)
        if item_id in self.tree:
            fork = self.tree.fork(item_id)
            check_invariant(fork)
            assert [i.id for i in fork.path] == [i.id for i in self.tree.path_to(item_id)]

    @invariant()
    def keeps_its_invariant(self) -> None:
        check_invariant(self.tree)

    @invariant()
    def says_well_formed_messages(self) -> None:
        for message in prompt_messages(self.tree.path):
            assert message.role != "assistant" or all(call.id for call in message.tool_calls)

    @invariant()
    def round_trips(self) -> None:
        record = encode(self.tree)
        assert encode(decode(record, BOUNDS)) == record


Operations.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
test_random_operations_keep_the_invariant = Operations.TestCase
