"""Tests for gateway.core.conversation with tool items: calls follow their reply, results answer them once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.core.items import Content, ConversationError
from gateway.engine.contract import ToolCall
from gateway.errors import ErrorCode
from tests.conversation_support import said, tree

CALL = ToolCall("c1", "lookup", '{"q": 1}')


def refused(code: ErrorCode, call: Callable[..., object], *args: object) -> None:
    """`call(*args)` raises a ConversationError with `code`."""
    with pytest.raises(ConversationError) as raised:
        call(*args)
    assert raised.value.code is code


def test_delete_takes_a_replys_calls_results_and_inactive_branches() -> None:
    """A reply goes with its tool items and the branches below them; the ids removed are returned."""
    t = tree()
    t.append(Content.user("u"))
    t.append(Content.reply("a"))
    t.append(Content.tool_call(CALL))
    t.append(Content.tool_result("c1", "r"))
    t.append(Content.reply("on"))
    t.attach("i4", Content.reply("other"))
    assert sorted(t.delete("i2")) == ["i2", "i3", "i4", "i5"]
    assert said(t) == ["u", "other"]


def test_delete_refuses_tool_items_and_inactive_items() -> None:
    """A call or result alone, or an item off the active path, is invalid_field; an unknown id not_found."""
    t = tree()
    t.append(Content.user("u"))
    t.append(Content.reply("a"))
    t.append(Content.tool_call(CALL))
    refused(ErrorCode.INVALID_FIELD, t.delete, "i3")
    t.attach("i1", Content.reply("b"))
    refused(ErrorCode.INVALID_FIELD, t.delete, "i2")
    refused(ErrorCode.NOT_FOUND, t.delete, "zz")


def test_tool_results_answer_the_last_replys_calls_once() -> None:
    """A result for an unknown or answered call is not_found; a message before every call is answered is
    invalid_field; a call must follow a reply."""
    t = tree()
    refused(ErrorCode.INVALID_FIELD, t.append, Content.tool_call(CALL))
    t.append(Content.user("u"))
    t.append(Content.reply("a"))
    t.append(Content.tool_call(CALL))
    t.append(Content.tool_call(ToolCall("c2", "f", "{}")))
    refused(ErrorCode.NOT_FOUND, t.append, Content.tool_result("c9", "r"))
    t.append(Content.tool_result("c1", "r1"))
    refused(ErrorCode.NOT_FOUND, t.append, Content.tool_result("c1", "again"))
    refused(ErrorCode.INVALID_FIELD, t.append, Content.user("next"))
    assert t.pending_calls(t.path[-1].id) == ["c2"]
