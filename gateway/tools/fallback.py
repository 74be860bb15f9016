"""Tools for a chat template that knows nothing of them: described in the system prompt, calls and
results written as plain text in the Hermes syntax (which the reply is then parsed with)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.engine.contract import ChatMessage
from gateway.tools.hermes import HermesFormat

_INTRO = (
    "You may call one or more functions to assist with the user query. The functions are described "
    "within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\nFor each function call, return a JSON "
    'object with the function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": '
    '<function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def needs_fallback(messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]]) -> bool:
    return bool(tools) or any(m.tool_calls or m.role == "tool" for m in messages)


def plain_messages(messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]]) -> list[ChatMessage]:
    """The same conversation in roles every template knows: system, user, assistant."""
    out = [_message(m) for m in messages]
    if tools:
        described = _INTRO.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if out and out[0].role == "system":
            out[0] = ChatMessage("system", f"{out[0].text}\n\n{described}")
        else:
            out.insert(0, ChatMessage("system", described))
    return out


def _message(message: ChatMessage) -> ChatMessage:
    if message.role == "tool":
        return ChatMessage("user", f"<tool_response>\n{message.text}\n</tool_response>")
    if message.tool_calls:
        calls = "\n".join(HermesFormat().render(call) for call in message.tool_calls)
        return ChatMessage("assistant", f"{message.text}\n{calls}" if message.text else calls, message.images)
    return message
