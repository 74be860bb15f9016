"""Tools on the WebSocket: forced calls stream as tool_call frames, results join the history, the next turn goes on."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from gateway.client import GatewayClient
from tests.conftest import RunningServer

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 16}, "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}, "hours": {"type": "integer", "minimum": 0, "maximum": 23}},
    "required": ["zone", "hours"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a zone", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


async def call_turn(ws: GatewayClient, turn_id: str, **options: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run a turn; return its tool_call frames and its done."""
    await ws.start_turn(turn_id, "What is the weather in Paris?", **options)
    calls = []
    while True:
        frame = await ws.recv()
        if frame["type"] == "tool_call":
            calls.append(frame)
        elif frame["type"] == "done":
            return calls, frame
        elif frame["type"] == "error":
            raise AssertionError(frame)


async def test_required_choice_always_calls_one_of_the_tools_validly(server: RunningServer) -> None:
    """tool_choice required with two functions: every sampled reply is one valid call to one of them."""
    async with GatewayClient(server.ws_url) as ws:
        await ws.request({"type": "configure", "tools": TOOLS, "tool_choice": "required", "temperature": 1.0, "max_tokens": 120})
        names = set()
        for i in range(8):
            await ws.request({"type": "reset"})
            calls, done = await call_turn(ws, f"r{i}", seed=i)
            assert done["finish_reason"] == "tool_calls" and done["structured"] is True and len(calls) == 1
            call = calls[0]
            assert call["id"] == f"r{i}" and call["call_id"].startswith("call_")
            jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
            names.add(call["name"])
    assert names  # (with random weights either function may win)


async def test_named_choice_calls_that_function(server: RunningServer) -> None:
    """A named tool_choice forces a call to exactly that function."""
    async with GatewayClient(server.ws_url) as ws:
        choice = {"type": "function", "function": {"name": "get_time"}}
        calls, done = await call_turn(ws, "n1", tools=TOOLS, tool_choice=choice, temperature=1.0, seed=4, max_tokens=120)
    assert [c["name"] for c in calls] == ["get_time"] and done["finish_reason"] == "tool_calls"
    jsonschema.validate(json.loads(calls[0]["arguments"]), TIME)


async def test_tool_loop_call_result_then_final_answer(server: RunningServer) -> None:
    """call -> tool_result -> an empty turn goes on from the result to a text answer; history shows it all."""
    async with GatewayClient(server.ws_url) as ws:
        await ws.request({"type": "configure", "tools": TOOLS, "max_tokens": 120, "temperature": 1.0, "seed": 2})
        calls, _ = await call_turn(ws, "t1", tool_choice="required")
        premature = await ws.turn("t1b", "", max_tokens=4)
        await ws.send({"type": "tool_result", "call_id": calls[0]["call_id"], "content": '{"temperature": 21}'})
        answer = await ws.turn("t2", "", tool_choice="none", max_tokens=8, temperature=0)
        history = await ws.request({"type": "history"})
    assert premature.errors and premature.errors[0]["code"] == "invalid_field" and premature.done is None
    assert answer.done and answer.done["finish_reason"] in ("stop", "length") and answer.done["structured"] is None
    roles = [(t["role"], t["id"]) for t in history["turns"]]
    assert roles == [("user", "t1"), ("assistant", "t1"), ("tool", "t1"), ("assistant", "t2")]
    assert history["turns"][1]["tool_calls"][0]["call_id"] == calls[0]["call_id"]
    assert history["turns"][2]["call_id"] == calls[0]["call_id"]


async def test_unknown_or_repeated_tool_result_is_not_found(server: RunningServer) -> None:
    """A result for a call that is not pending is refused with not_found, echoing the frame id."""
    async with GatewayClient(server.ws_url) as ws:
        refused = await ws.request({"type": "tool_result", "id": "x1", "call_id": "call_nope", "content": "1"})
    assert refused["type"] == "error" and refused["code"] == "not_found" and refused["id"] == "x1"


async def test_named_choice_outside_tools_is_invalid_field(server: RunningServer) -> None:
    async with GatewayClient(server.ws_url) as ws:
        choice = {"type": "function", "function": {"name": "nope"}}
        result = await ws.turn("x", "hi", tools=TOOLS, tool_choice=choice, max_tokens=4)
    assert result.errors[0]["code"] == "invalid_field" and "nope" in result.errors[0]["message"]
