"""A path of items as the flat chat messages the prompt builder takes, and split into turns for trimming."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from gateway.core.items import Item, Role, turn_starts
from gateway.engine.contract import ChatMessage

_CHAT_ROLES: dict[Role, Literal["user", "assistant", "system"]] = {
    Role.USER: "user",
    Role.ASSISTANT: "assistant",
    Role.NOTE: "system",
}


def prompt_messages(path: Sequence[Item]) -> list[ChatMessage]:
    """The messages `path` says, as gateway/session.py's history has them: a reply's calls join its
    message; each result is a tool message; a note is a system message where it stands."""
    messages: list[ChatMessage] = []
    for item in path:
        content = item.content
        if content.role is Role.TOOL_CALL:
            assert content.call is not None and messages and messages[-1].role == "assistant", "a call follows its reply"
            messages[-1] = replace(messages[-1], tool_calls=(*messages[-1].tool_calls, content.call))
        elif content.role is Role.TOOL_RESULT:
            messages.append(ChatMessage("tool", content.text, tool_call_id=content.call_id))
        else:
            messages.append(ChatMessage(_CHAT_ROLES[content.role], content.text, content.images))
    return messages


def split_turns(path: Sequence[Item]) -> list[list[Item]]:
    """`path` cut where each turn begins: the units a prompt that must fit the context window drops,
    oldest first (as gateway/session.py drops its exchanges)."""
    starts = turn_starts([item.role for item in path])
    return [list(path[start:end]) for start, end in zip(starts, [*starts[1:], len(path)])]
