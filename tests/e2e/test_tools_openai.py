"""Tools on the OpenAI API: the official SDK's tool loop (call -> tool message -> answer), streamed and not."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from openai import OpenAI

from gateway.engine.contract import GenerationRequest
from tests.e2e.test_openai import api, client, submitted
from tests.e2e.test_tools_ws import SCHEMAS, TOOLS

__all__ = ["api", "client", "submitted"]  # fixtures shared with test_openai

QUESTION: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Paris?"}]


def ask(client: OpenAI, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    options = {"temperature": 1.0, "seed": 1, "max_tokens": 120} | kwargs
    return client.chat.completions.create(model="gateway-demo", messages=messages, tools=TOOLS, **options)  # type: ignore[arg-type]


def answered(call_id: str, name: str, arguments: str) -> list[dict[str, Any]]:
    """The conversation after the call: the assistant's tool_calls message and the tool's result."""
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": '{"temperature": 21}'},
    ]


def test_sdk_tool_loop(client: OpenAI, submitted: list[GenerationRequest]) -> None:
    """required -> a valid call and finish_reason tool_calls; the tool message then reaches the prompt."""
    first = ask(client, QUESTION, tool_choice="required")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    final = ask(client, answered(call.id, call.function.name, call.function.arguments), tool_choice="none", temperature=0)
    assert final.choices[0].finish_reason in ("stop", "length") and final.choices[0].message.tool_calls is None
    messages = submitted[-1].messages
    assert [m.role for m in messages] == ["user", "assistant", "tool"]
    assert messages[1].tool_calls[0].id == call.id and messages[2].tool_call_id == call.id


def test_sdk_tool_loop_streamed(client: OpenAI) -> None:
    """Streamed: the call arrives as tool_calls deltas with an index, then finish_reason tool_calls."""
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in ask(client, QUESTION, tool_choice="required", stream=True):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += delta.id or ""
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and len(calls) == 1
    call = calls[0]
    jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
    text = ""
    for chunk in ask(
        client, answered(call["id"], call["name"], call["arguments"]), tool_choice="none", stream=True, temperature=0
    ):
        text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text


def test_named_choice_and_parallel_flag(client: OpenAI) -> None:
    """A named tool_choice calls that function; parallel_tool_calls is accepted."""
    choice = {"type": "function", "function": {"name": "get_time"}}
    reply = ask(client, QUESTION, tool_choice=choice, parallel_tool_calls=False)
    calls = reply.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"]
