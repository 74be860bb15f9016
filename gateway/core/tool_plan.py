"""A turn's tools: which definitions the template renders, which call (if any) the grammar forces, how to parse."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgspec

from gateway.core import request as req
from gateway.engine.contract import Grammar, SamplingParams, ToolCallSink, TurnSink
from gateway.errors import ErrorCode, GatewayError
from gateway.tools.formats import ToolFormat
from gateway.tools.stream import ToolCallFilter


@dataclass(frozen=True)
class ToolPlan:
    tools: tuple[dict[str, Any], ...] = ()  # OpenAI function definitions, for the chat template
    grammar: Grammar | None = None  # set when a call is required: the reply is exactly one call (checked by the caller)
    syntax: ToolFormat | None = None  # replies are parsed for calls with it; None: no tools this turn

    def params(self, params: SamplingParams) -> SamplingParams:
        """A forced call's grammar replaces any response_format for the turn."""
        return replace(params, grammar=self.grammar) if self.grammar is not None else params

    def sink(self, sink: ToolCallSink) -> TurnSink:
        return sink if self.syntax is None else ToolCallFilter(sink, self.syntax)


NO_TOOLS = ToolPlan()


def plan_tools(tools: Sequence[req.ToolSpec] | None, choice: req.ToolChoice | None, syntax: ToolFormat) -> ToolPlan:
    """Check the tools against the choice and build the plan; problems are `invalid_field`."""
    if not tools:
        if choice in (None, "auto", "none"):
            return NO_TOOLS
        raise GatewayError(ErrorCode.INVALID_FIELD, "tool_choice requires tools", field="tool_choice")
    if choice == "none":
        return NO_TOOLS
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise GatewayError(ErrorCode.INVALID_FIELD, "tools: function names must be unique", field="tools")
    definitions = tuple(definition(t) for t in tools)
    forced: tuple[dict[str, Any], ...] = ()
    if choice == "required":
        forced = definitions
    elif isinstance(choice, req.NamedToolChoice):
        forced = tuple(d for d in definitions if d["function"]["name"] == choice.function.name)
        if not forced:
            raise GatewayError(
                ErrorCode.INVALID_FIELD, f"tool_choice names {choice.function.name!r}, which is not in tools", field="tool_choice"
            )
    upstream = msgspec.json.encode({"tool_choice": choice}).decode()
    # Unchecked here: the caller compiles it on the grammar pool (gateway/core/grammar_pool.py), off the event loop.
    grammar = Grammar("tool_call", syntax.grammar(forced), upstream) if forced else None
    return ToolPlan(definitions, grammar, syntax)


def definition(tool: req.ToolSpec) -> dict[str, Any]:
    """The OpenAI shape with only the fields that are set (templates print what they are given)."""
    function: dict[str, Any] = {"name": tool.function.name}
    if tool.function.description is not None:
        function["description"] = tool.function.description
    function["parameters"] = tool.function.parameters or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}
