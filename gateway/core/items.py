"""A conversation's items: what each one says, where it sits, and the errors the tree's operations raise."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.engine.contract import ChatImage, ToolCall
from gateway.errors import ErrorCode, GatewayError


class Role(str, enum.Enum):
    USER = "user"
    ASSISTANT = "assistant"  # a reply
    TOOL_CALL = "tool_call"  # one call of the reply above it
    TOOL_RESULT = "tool_result"  # the client's answer to one call
    NOTE = "note"  # a system note: context the model sees, that no reply need answer


# Roles a turn opens with (a reply opens one too where it answers no user message: after tool results).
OPENERS = frozenset({Role.USER, Role.NOTE})
TOOLS = frozenset({Role.TOOL_CALL, Role.TOOL_RESULT})


@dataclass(frozen=True)
class Content:
    """What an item says, before the tree gives it an id and a place."""

    role: Role
    text: str = ""
    images: tuple[ChatImage, ...] = ()  # a user item's pictures
    call: ToolCall | None = None  # a tool_call item's call
    call_id: str | None = None  # a tool_result item answers this call
    partial: bool = False  # a reply cut short: cancelled, or truncated to what the client showed
    turn_id: str | None = None  # the client's id of the turn that made it

    @staticmethod
    def user(text: str, images: tuple[ChatImage, ...] = (), turn_id: str | None = None) -> Content:
        return Content(Role.USER, text, images, turn_id=turn_id)

    @staticmethod
    def reply(text: str, partial: bool = False, turn_id: str | None = None) -> Content:
        return Content(Role.ASSISTANT, text, partial=partial, turn_id=turn_id)

    @staticmethod
    def tool_call(call: ToolCall, turn_id: str | None = None) -> Content:
        return Content(Role.TOOL_CALL, call=call, turn_id=turn_id)

    @staticmethod
    def tool_result(call_id: str, text: str) -> Content:
        return Content(Role.TOOL_RESULT, text, call_id=call_id)

    @staticmethod
    def note(text: str) -> Content:
        return Content(Role.NOTE, text)

    @property
    def text_bytes(self) -> int:
        """Its bytes but the pictures' (which the tree counts once per picture, however many items show it)."""
        call = len(self.call.name.encode()) + len(self.call.arguments.encode()) if self.call is not None else 0
        return len(self.text.encode()) + call


@dataclass(frozen=True)
class Item:
    """One message of the tree: `id` is the server's, unique in its session; `born` is the tree's clock
    when it was made."""

    id: str
    parent: str | None  # None: a root (the conversation's first item, or a sibling of it)
    content: Content
    born: int

    @property
    def role(self) -> Role:
        return self.content.role


@dataclass(frozen=True)
class Placed:
    """An item of the active path with its place among its siblings (the `< 2/3 >` a client shows)."""

    item: Item
    siblings: int  # items with the same parent, itself included
    index: int  # its place among them, 0 for the first


class ConversationError(GatewayError):
    """An operation's precondition failed: `not_found` (no such item), `invalid_field` (not that kind of
    item, or not where the operation applies) or `too_large` (one item above the tree's byte bound)."""


def not_found(item_id: str) -> ConversationError:
    return ConversationError(ErrorCode.NOT_FOUND, f"no item {item_id!r} in this conversation")


def invalid(message: str) -> ConversationError:
    return ConversationError(ErrorCode.INVALID_FIELD, message)


def turn_starts(roles: list[Role]) -> list[int]:
    """Where each turn of a path begins: at every user message and note, and at every reply that answers
    none (one that goes on after tool results, or one inserted after another reply)."""
    return [
        i
        for i, role in enumerate(roles)
        if role in OPENERS or (role is Role.ASSISTANT and (i == 0 or roles[i - 1] not in OPENERS))
    ]
