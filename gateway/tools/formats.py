"""The interface every family's tool-call syntax implements, and the JSON helpers the formats share."""

from __future__ import annotations

import json
import re
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

    def json_call(self, value: Any, arguments_key: str = "arguments", missing: Any = None) -> ToolCall | None:
        """A JSON object {"name": ..., <arguments_key>: {...}} as a call; None when it is not one."""
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return None
        arguments = arguments_text(value.get(arguments_key, missing))
        return None if arguments is None else ToolCall(self.new_call_id(), value["name"], arguments)


class WholeReplyFormat(ToolFormat):
    """A reply that is nothing but calls, after a tag the detokenizer may or may not have dropped."""

    at_start_only = True
    tag = ""

    def parse(self, text: str) -> ParsedReply:
        calls = self.calls_in(text.strip().removeprefix(self.tag).strip())
        return ParsedReply("", calls) if calls else ParsedReply(text, ())

    def calls_in(self, body: str) -> tuple[ToolCall, ...]:
        """Every call `body` holds, or none when it is not wholly calls."""
        raise NotImplementedError


class TaggedFormat(ToolFormat):
    """Calls each wrapped in tags, anywhere in the reply: the text before the first is the content, and a
    tagged body that is not a call makes the whole reply text."""

    pattern: re.Pattern[str]  # one call, tags included

    def parse(self, text: str) -> ParsedReply:
        calls = []
        for match in self.pattern.finditer(text):
            call = self.call_in(match)
            if call is None:
                return ParsedReply(text, ())
            calls.append(call)
        start = text.find(self.opening)
        return ParsedReply(text[:start].rstrip() if calls else text, tuple(calls))

    def call_in(self, match: re.Match[str]) -> ToolCall | None:
        """The call one match of `pattern` holds, or None."""
        raise NotImplementedError


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
