"""Mistral tool calls: [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]. [TOOL_CALLS] is a control
token, dropped when the reply is detokenized, so a reply opening with a JSON array is read as calls."""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Sequence
from typing import Any

from gateway.engine.contract import ToolCall
from gateway.tools.formats import ParsedReply, ToolFormat, arguments_text, call_schema, json_rule

_TAG = "[TOOL_CALLS]"
_ID_CHARS = string.ascii_letters + string.digits


class MistralFormat(ToolFormat):
    name = "mistral"
    opening = "["
    at_start_only = True

    def parse(self, text: str) -> ParsedReply:
        body = text.strip().removeprefix(_TAG).strip()
        try:
            values = json.loads(body) if body.startswith("[") else None
        except ValueError:
            values = None
        if not isinstance(values, list) or not values:
            return ParsedReply(text, ())
        calls = []
        for value in values:
            arguments = arguments_text(value.get("arguments")) if isinstance(value, dict) else None
            if arguments is None or not isinstance(value.get("name"), str):
                return ParsedReply(text, ())
            calls.append(ToolCall(self.new_call_id(), value["name"], arguments))
        return ParsedReply("", tuple(calls))

    def grammar(self, tools: Sequence[dict[str, Any]]) -> str:
        return f'start: "[" call "]"\ncall: {json_rule(call_schema(tools))}'

    def new_call_id(self) -> str:
        """Mistral's templates insist on 9 alphanumeric characters."""
        return "".join(secrets.choice(_ID_CHARS) for _ in range(9))
