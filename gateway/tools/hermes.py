"""Hermes-style calls (Qwen 2.5/3, Hermes, and the gateway's own fallback): <tool_call>{json}</tool_call>."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from gateway.engine.contract import ToolCall
from gateway.tools.formats import TaggedFormat, call_schema, json_rule


class HermesFormat(TaggedFormat):
    name = "hermes"
    opening = "<tool_call>"
    pattern = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)

    def call_in(self, match: re.Match[str]) -> ToolCall | None:
        try:
            value = json.loads(match.group(1))
        except ValueError:
            return None
        return self.json_call(value, missing={})  # Hermes may leave out the arguments of a call that has none

    def grammar(self, tools: Sequence[dict[str, Any]]) -> str:
        return f'start: "<tool_call>\\n" call "\\n</tool_call>"\ncall: {json_rule(call_schema(tools))}'

    def render(self, call: ToolCall) -> str:
        """A call as this syntax writes it (for templates that do not render calls themselves)."""
        return f'<tool_call>\n{{"name": {json.dumps(call.name)}, "arguments": {call.arguments}}}\n</tool_call>'
