"""Hermes-style calls (Qwen 2.5/3, Hermes, and the gateway's own fallback): <tool_call>{json}</tool_call>."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from gateway.engine.contract import ToolCall
from gateway.tools.formats import ParsedReply, ToolFormat, arguments_text, call_schema, json_rule

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


class HermesFormat(ToolFormat):
    name = "hermes"
    opening = "<tool_call>"

    def parse(self, text: str) -> ParsedReply:
        calls = []
        for body in _CALL.findall(text):
            call = self._call(body)
            if call is None:
                return ParsedReply(text, ())
            calls.append(call)
        start = text.find(self.opening)
        return ParsedReply(text[:start].rstrip() if calls else text, tuple(calls))

    def _call(self, body: str) -> ToolCall | None:
        try:
            value = json.loads(body)
        except ValueError:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return None
        arguments = arguments_text(value.get("arguments", {}))
        return None if arguments is None else ToolCall(self.new_call_id(), value["name"], arguments)

    def grammar(self, tools: Sequence[dict[str, Any]]) -> str:
        return f'start: "<tool_call>\\n" call "\\n</tool_call>"\ncall: {json_rule(call_schema(tools))}'

    def render(self, call: ToolCall) -> str:
        """A call as this syntax writes it (for templates that do not render calls themselves)."""
        return f'<tool_call>\n{{"name": {json.dumps(call.name)}, "arguments": {call.arguments}}}\n</tool_call>'
