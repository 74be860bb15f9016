"""GLM-4.5/4.6 (and GLM-4.5V) tool calls: <tool_call>name <arg_key>k</arg_key><arg_value>v</arg_value>...</tool_call>,
each value a JSON value or, for strings, the bare text."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from gateway.engine.contract import ToolCall
from gateway.tools.formats import TaggedFormat, parameters_schema

_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


class GlmFormat(TaggedFormat):
    name = "glm"
    opening = "<tool_call>"
    pattern = re.compile(r"<tool_call>\s*([A-Za-z0-9_.-]+)\s*(.*?)</tool_call>", re.S)

    def call_in(self, match: re.Match[str]) -> ToolCall | None:
        name, body = match.groups()
        if _ARG.sub("", body).strip():  # anything but key/value pairs: not a call
            return None
        return ToolCall(self.new_call_id(), name, json.dumps(_arguments(body), ensure_ascii=False))

    def grammar(self, tools: Sequence[dict[str, Any]]) -> str:
        """One call: the name, then each required parameter (in declared order) as a key and a JSON value
        under its own schema, so the arguments always validate."""
        rules = [f"start: {' | '.join(f'call{i}' for i in range(len(tools)))}"]
        for i, tool in enumerate(tools):
            schema = parameters_schema(tool)
            required = [k for k in schema.get("properties", {}) if k in schema.get("required", [])]
            pieces = [json.dumps(f"<tool_call>{tool['function']['name']}\n")]
            for j, key in enumerate(required):
                rule = f"arg{i}_{j}"
                pieces.append(rule)
                value = schema["properties"][key] | {"x-guidance": {"whitespace_flexible": False}}
                key_text = json.dumps(f"<arg_key>{key}</arg_key>\n<arg_value>")
                rules.append(f'{rule}: {key_text} %json {json.dumps(value)} "</arg_value>\\n"')
            pieces.append(json.dumps("</tool_call>"))
            rules.append(f"call{i}: {' '.join(pieces)}")
        return "\n".join(rules)


def _arguments(body: str) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    for key, raw in _ARG.findall(body):
        try:
            arguments[key.strip()] = json.loads(raw)
        except ValueError:
            arguments[key.strip()] = raw  # GLM writes string values bare
    return arguments
