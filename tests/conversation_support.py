"""Helpers for the conversation tree's tests: deterministic ids, pictures, and a chat in a few lines."""

from __future__ import annotations

import hashlib
import itertools

from gateway.core.conversation import Conversation
from gateway.core.item_tree import Bounds, IdSource
from gateway.core.items import Content
from gateway.engine.contract import ChatImage

ROOMY = Bounds(max_turns=100, max_image_bytes=1_000_000, max_siblings=8)


def counting_ids() -> IdSource:
    """Ids i1, i2, ... so a test can name the items it made."""
    numbers = itertools.count(1)
    return lambda: f"i{next(numbers)}"


def picture(name: str, size: int = 100) -> ChatImage:
    """A stand-in picture of `size` bytes: the tree reads only its bytes and its sha256."""
    data = (name.encode() * size)[:size]
    return ChatImage(data, "image/png", 4, 3, hashlib.sha256(data).hexdigest())


def tree(bounds: Bounds = ROOMY) -> Conversation:
    return Conversation(bounds, counting_ids())


def chat(conversation: Conversation, *texts: str) -> None:
    """One exchange per text: user message `u<text>` answered `a<text>`."""
    for text in texts:
        conversation.append(Content.user(f"u{text}"))
        conversation.append(Content.reply(f"a{text}"))


def said(conversation: Conversation) -> list[str]:
    """The active path's texts, in order."""
    return [item.content.text for item in conversation.path]
