"""Tools and structured output through an upstream engine: passed through for the upstream to enforce."""

from __future__ import annotations

import json

from gateway.core.structured import response_grammar
from gateway.core.tool_plan import plan_tools
from gateway.engine.contract import ChatMessage, SamplingParams, ToolCall
from gateway.engine.upstream import stream, wire
from gateway.tools.hermes import HermesFormat
from gateway.ws import protocol as p
from tests.e2e.test_tools_ws import TOOLS

TOOL_SPECS = [p.ToolSpec(type="function", function=p.FunctionSpec(**t["function"])) for t in TOOLS]


def test_response_format_and_tools_pass_through() -> None:
    """The request carries tools, and the response_format as the client sent it."""
    fmt = p.JsonSchemaFormat(json_schema=p.JsonSchemaSpec(name="pet", schema={"type": "object"}))
    params = SamplingParams(grammar=response_grammar(fmt))
    body = wire.chat_body("m", [ChatMessage("user", "hi")], params, TOOLS)
    assert body["tools"] == TOOLS
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "pet", "schema": {"type": "object"}}}


def test_forced_call_passes_tool_choice() -> None:
    """A required or named choice reaches the upstream as tool_choice, not as our grammar."""
    named = p.NamedToolChoice(type="function", function=p.FunctionRef(name="get_time"))
    for choice, expected in (("required", "required"), (named, {"type": "function", "function": {"name": "get_time"}})):
        plan = plan_tools(TOOL_SPECS, choice, HermesFormat())
        body = wire.chat_body("m", [ChatMessage("user", "hi")], plan.params(SamplingParams()), plan.tools)
        assert body["tool_choice"] == expected and "response_format" not in body


def test_history_messages_keep_calls_and_results() -> None:
    call = ToolCall("call_1", "get_time", '{"zone": "UTC"}')
    bodies = wire.messages_body(
        [ChatMessage("assistant", "", tool_calls=(call,)), ChatMessage("tool", "3", tool_call_id="call_1")]
    )
    assert bodies[0]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "UTC"}'}}
    ]
    assert bodies[1] == {"role": "tool", "content": "3", "tool_call_id": "call_1"}


def test_streamed_tool_call_deltas_merge_into_calls() -> None:
    """The id and name come once, the arguments in pieces; finish_reason tool_calls is kept."""
    lines = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "get_time", "arguments": ""}}]},
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"zone": '}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"UTC"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    calls: dict[int, dict[str, str]] = {}
    reason = None
    for line in lines:
        event = stream.parse_sse_line("data: " + json.dumps(line))
        assert event is not None
        wire.merge_tool_call_deltas(calls, event.tool_calls)
        reason = event.finish_reason or reason
    assert calls == {0: {"id": "c1", "name": "get_time", "arguments": '{"zone": "UTC"}'}}
    assert wire.finish_reason(reason) == "tool_calls"
