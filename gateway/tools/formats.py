"""The interface every family's tool-call syntax implements, and the JSON helpers the formats share."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.engine.contract import ToolCall


@dataclass(frozen=True)
class ParsedReply:
    content: str  # the reply's text outside the calls
    calls: tuple[ToolCall, ...]


class ToolFormat:
    """One family's syntax for tool calls in a reply. Pure: text in, calls out; a Lark grammar (llguidance's
    dialect, `%json` embedding a schema) that forces a call when the client requires one."""

    name = ""
    opening = ""  # text that starts a call; the reply is held back from the client from here on
    at_start_only = False  # the syntax is only recognised at the start of the reply

    def call_start(self, text: str) -> int | None:
        """Where a call (or what may still become one) starts in `text`, else None."""
        if self.at_start_only:
            stripped = len(text) - len(text.lstrip())
            rest = text[stripped:]
            return stripped if rest and (rest.startswith(self.opening) or self.opening.startswith(rest)) else None
        at = text.find(self.opening)
        if at != -1:
            return at
        for n in range(min(len(self.opening) - 1, len(text)), 0, -1):  # a tail that may grow into the opening
            if self.opening.startswith(text[-n:]):
                return len(text) - n
        return None

    def parse(self, text: str) -> ParsedReply:
        raise NotImplementedError

    def grammar(self, tools: Sequence[dict[str, Any]]) -> str:
        """Lark for exactly one call to one of `tools` (OpenAI function definitions)."""
        raise NotImplementedError

    def new_call_id(self) -> str:
        return "call_" + secrets.token_hex(12)


def call_schema(tools: Sequence[dict[str, Any]], arguments_key: str = "arguments") -> dict[str, Any]:
    """{"name": <one of the tools>, <arguments_key>: <that tool's parameters>} as one JSON schema."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t["function"]["name"]}, arguments_key: parameters_schema(t)},
            "required": ["name", arguments_key],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def parameters_schema(tool: dict[str, Any]) -> dict[str, Any]:
    parameters = tool["function"].get("parameters")
    return dict(parameters) if parameters else {"type": "object", "properties": {}}


def json_rule(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps(schema | {"x-guidance": {"whitespace_flexible": False}})


def arguments_text(arguments: Any) -> str | None:
    """Arguments as compact JSON text of an object, or None when they are not an object."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):  # a client's replayed arguments may nest past the parser
            return None
    return json.dumps(arguments, ensure_ascii=False) if isinstance(arguments, dict) else None


def arguments_object(arguments: str) -> dict[str, Any]:
    """Arguments JSON text as the object chat templates expect (they write it with `tojson`)."""
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}
