"""Llama 3.1+ JSON tool calls: the reply is {"name": ..., "parameters": {...}} (after <|python_tag|>, if any)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.engine.contract import ToolCall
from gateway.tools.formats import WholeReplyFormat, call_schema, json_rule

_DECODER = json.JSONDecoder()


class Llama3Format(WholeReplyFormat):
    name = "llama3"
    opening = "{"
    tag = "<|python_tag|>"

    def calls_in(self, body: str) -> tuple[ToolCall, ...]:
        calls, at = [], 0
        while body.startswith("{", at):  # several calls come separated by ";"
            try:
                value, at = _DECODER.raw_decode(body, at)
            except ValueError:
                return ()
            key = "parameters" if isinstance(value, dict) and "parameters" in value else "arguments"  # older templates
            if (call := self.json_call(value, key)) is None:
                return ()
            calls.append(call)
            at = len(body) - len(body[at:].lstrip().removeprefix(";").lstrip())
        return tuple(calls) if at == len(body) else ()  # text after the calls: not a reply of calls

    def grammar(self, tools: Sequence[dict[str, Any]]) -> str:
        return f"start: {json_rule(call_schema(tools, 'parameters'))}"
