"""Llama 3.1+ JSON tool calls: the reply is {"name": ..., "parameters": {...}} (after <|python_tag|>, if any)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.engine.contract import ToolCall
from gateway.tools.formats import ParsedReply, ToolFormat, arguments_text, call_schema, json_rule

_TAG = "<|python_tag|>"
_DECODER = json.JSONDecoder()


class Llama3Format(ToolFormat):
    name = "llama3"
    opening = "{"
    at_start_only = True

    def parse(self, text: str) -> ParsedReply:
        body = text.strip().removeprefix(_TAG).strip()
        calls, at = [], 0
        while body.startswith("{", at):  # several calls come separated by ";"
            try:
                value, at = _DECODER.raw_decode(body, at)
            except ValueError:
                return ParsedReply(text, ())
            arguments = arguments_text(value.get("parameters", value.get("arguments"))) if isinstance(value, dict) else None
            if arguments is None or not isinstance(value.get("name"), str):
                return ParsedReply(text, ())
            calls.append(ToolCall(self.new_call_id(), value["name"], arguments))
            at = len(body) - len(body[at:].lstrip().removeprefix(";").lstrip())
        if at < len(body):  # text after the calls: not a reply of calls
            return ParsedReply(text, ())
        return ParsedReply("" if calls else text, tuple(calls))

    def grammar(self, tools: Sequence[dict[str, Any]]) -> str:
        return f"start: {json_rule(call_schema(tools, 'parameters'))}"
