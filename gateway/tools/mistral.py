"""Mistral tool calls: [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]. [TOOL_CALLS] is a control
token, dropped when the reply is detokenized, so a reply opening with a JSON array is read as calls."""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Sequence
from typing import Any

from gateway.engine.contract import ToolCall
from gateway.tools.formats import WholeReplyFormat, call_schema, json_rule

_ID_CHARS = string.ascii_letters + string.digits


class MistralFormat(WholeReplyFormat):
    name = "mistral"
    opening = "["
    tag = "[TOOL_CALLS]"

    def calls_in(self, body: str) -> tuple[ToolCall, ...]:
        try:
            values = json.loads(body) if body.startswith("[") else None
        except ValueError:
            return ()
        calls = [self.json_call(value) for value in values] if isinstance(values, list) else []
        return () if None in calls else tuple(call for call in calls if call is not None)

    def grammar(self, tools: Sequence[dict[str, Any]]) -> str:
        return f'start: "[" call "]"\ncall: {json_rule(call_schema(tools))}'

    def new_call_id(self) -> str:
        """Mistral's templates insist on 9 alphanumeric characters."""
        return "".join(secrets.choice(_ID_CHARS) for _ in range(9))
