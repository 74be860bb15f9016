"""Bad input on every path against a real server: out-of-range integers and deep nesting in schemas and tool
parameters are `invalid_field` (WebSocket, JSON and msgpack) or HTTP 400, never a 1011 close or a 500; an
overflowing continuation is `context_overflow`, and a tool result is held to max_text_chars."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
import requests

from gateway.client import GatewayClient
from gateway.core.json_bounds import MAX_JSON_DEPTH
from gateway.tools.formats import arguments_object, arguments_text
from tests.conftest import RunningServer
from tests.e2e.test_hardening_input import check_rejected, expect_error, good_turn, history_turns
from tests.e2e.test_tools_ws import TOOLS, call_turn

HUGE = 100_000_000_000_000_000_000  # above 2**64: no 64-bit integer holds it


def nested(depth: int) -> Any:
    """A JSON value `depth` containers deep, alternating maps and lists as schemas do."""
    value: Any = {}
    for level in range(depth - 1):
        value = {"items": value} if level % 2 else [value]
    return value


def schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def tools_with(parameters: Any) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": "f", "parameters": parameters}}]


HUGE_MAXIMUM = {"type": "object", "properties": {"a": {"type": "integer", "maximum": HUGE}}}
HUGE_DEFAULT = {"type": "object", "properties": {"a": {"type": "integer", "default": -HUGE}}}
DEEP = nested(500)  # past MAX_JSON_DEPTH, within what the JSON and msgpack decoders read
# (name, options): each is refused, in a `turn`'s options and in a `configure`.
BAD_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("schema-integer-above-64-bits", {"response_format": schema_format(HUGE_MAXIMUM)}),
    ("schema-integer-below-64-bits", {"response_format": schema_format(HUGE_DEFAULT)}),
    ("schema-500-deep", {"response_format": schema_format({"a": DEEP})}),
    ("tool-parameters-integer-above-64-bits", {"tools": tools_with(HUGE_MAXIMUM)}),
    ("tool-parameters-500-deep", {"tools": tools_with({"a": DEEP})}),
]
# msgpack carries no integer beyond 64 bits; its decoder reads 1,000 levels (its packer writes 511: spliced in).
MSGPACK_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("schema-1000-deep", {"response_format": schema_format({"a": "DEEP"})}),
    ("tool-parameters-1000-deep", {"tools": tools_with({"a": "DEEP"})}),
]


def packed_1000_deep(frame: dict[str, Any]) -> bytes:
    return bytes(msgpack.packb(frame)).replace(b"\xa4DEEP", b"\x91" * 999 + b"\x90")


def frames(options: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "turn", "id": "bad", "text": "hi", "options": options}, {"type": "configure", "id": "bad", **options}]


@pytest.mark.parametrize("options", [pytest.param(o, id=n) for n, o in BAD_OPTIONS])
async def test_out_of_range_json_frame_is_invalid_field(server: RunningServer, options: dict[str, Any]) -> None:
    """Over JSON, a huge integer or deep nesting in a schema or tool parameters is `invalid_field`; nothing changes."""
    async with GatewayClient(server.ws_url) as client:
        for frame in frames(options):
            await check_rejected(client, json.dumps(frame), {"invalid_field"}, "bad")


@pytest.mark.parametrize("options", [pytest.param(o, id=n) for n, o in MSGPACK_OPTIONS])
async def test_json_frame_nested_past_the_parser_is_invalid_field(server: RunningServer, options: dict[str, Any]) -> None:
    """Over JSON, 1,000 levels in a schema or tool parameters (past what the parser reads) are still
    `invalid_field`, without the id it could not read; nothing changes."""
    async with GatewayClient(server.ws_url) as client:
        for frame in frames(options):
            text = json.dumps(frame).replace('"DEEP"', "[" * 1000 + "]" * 1000)
            await check_rejected(client, text, {"invalid_field"}, None)


@pytest.mark.parametrize("options", [pytest.param(o, id=n) for n, o in MSGPACK_OPTIONS])
async def test_out_of_range_msgpack_frame_is_invalid_field(server: RunningServer, options: dict[str, Any]) -> None:
    """Over msgpack, deep nesting in a schema or tool parameters is `invalid_field`; nothing changes."""
    async with GatewayClient(server.ws_url) as client:
        for frame in frames(options):
            await check_rejected(client, packed_1000_deep(frame), {"invalid_field"}, "bad")


async def test_nesting_bound_is_inclusive(server: RunningServer) -> None:
    """Tool parameters exactly MAX_JSON_DEPTH deep run; one level more is `invalid_field` naming the bound."""
    async with GatewayClient(server.ws_url) as client:
        for depth, fits in ((MAX_JSON_DEPTH, True), (MAX_JSON_DEPTH + 1, False)):
            parameters = {"type": "object", "x-note": nested(depth - 1)}
            result = await client.turn(f"d{depth}", "hi", tools=tools_with(parameters), max_tokens=2, temperature=0)
            if fits:
                assert result.errors == [] and result.done is not None
            else:
                assert [e["code"] for e in result.errors] == ["invalid_field"]
                assert str(MAX_JSON_DEPTH) in result.errors[0]["message"]


def post_chat(server: RunningServer, body: str) -> requests.Response:
    headers = {"content-type": "application/json"}
    return requests.post(f"{server.http_url}/v1/chat/completions", data=body, headers=headers, timeout=60)


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": "gateway-demo", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}], **fields}


def with_1000_deep(**fields: Any) -> str:
    """A body with 1,000 nested arrays where `fields` hold "DEEP" (too deep for json.dumps to write)."""
    return json.dumps(chat_body(**fields)).replace('"DEEP"', "[" * 1000 + "]" * 1000)


V1_BODIES: list[tuple[str, str]] = [
    *[(name, json.dumps(chat_body(**options))) for name, options in BAD_OPTIONS],
    ("schema-1000-deep", with_1000_deep(response_format=schema_format({"a": "DEEP"}))),
    ("tool-parameters-1000-deep", with_1000_deep(tools=tools_with({"a": "DEEP"}))),
    ("content-1000-deep", with_1000_deep(messages=[{"role": "user", "content": "DEEP"}])),
]


def test_replayed_arguments_nested_past_the_parser_render_as_no_arguments() -> None:
    """Tool-call arguments a /v1 client replays, nested past the JSON parser, render as {} (never a 500)."""
    deep = "[" * 100_000 + "]" * 100_000
    assert arguments_object(deep) == {} and arguments_text(deep) is None


@pytest.mark.parametrize("body", [pytest.param(b, id=n) for n, b in V1_BODIES])
def test_out_of_range_chat_request_is_400(server: RunningServer, body: str) -> None:
    """On /v1/chat/completions the same input is a 400 `invalid_field` naming the limit, never a 500."""
    response = post_chat(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_field" and error["type"] == "invalid_request_error"
    assert "Traceback" not in error["message"]
    assert post_chat(server, json.dumps(chat_body())).status_code == 200  # the server is fine


# ---- continuations: tool results that do not fit ------------------------------------------------------


async def called(client: GatewayClient) -> str:
    """A reply that called a tool; the id of its call."""
    calls, done = await call_turn(client, "c1", tools=TOOLS, tool_choice="required", temperature=1.0, seed=2, max_tokens=120)
    assert done["finish_reason"] == "tool_calls"
    return str(calls[0]["call_id"])


async def test_tool_result_over_max_text_chars_is_too_large(server: RunningServer) -> None:
    """A tool result longer than max_text_chars (240k characters, or one over) is refused; the call stays open."""
    limit = server.settings.max_text_chars
    async with GatewayClient(server.ws_url) as client:
        call_id = await called(client)
        for size in (240_000, limit + 1):
            await client.send({"type": "tool_result", "id": "r", "call_id": call_id, "content": "x" * size})
            error = await expect_error(client, {"too_large"}, "r")
            assert str(limit) in error["message"]
        await client.send({"type": "tool_result", "call_id": call_id, "content": "21 degrees"})
        answer = await client.turn("c2", "", max_tokens=2, temperature=0)
        assert answer.errors == [] and answer.done is not None


async def test_continuation_past_the_window_is_context_overflow(server: RunningServer) -> None:
    """A tool result that fills the window, then an empty turn: `context_overflow`, not `internal`; the
    history keeps the call and its result, and a new question (which drops them) then works."""
    window = server.engine.context_tokens
    async with GatewayClient(server.ws_url) as client:
        call_id = await called(client)
        content = " ".join(["word"] * min(server.settings.max_text_chars // 5, 2 * window))
        await client.send({"type": "tool_result", "call_id": call_id, "content": content})
        result = await client.turn("c2", "", max_tokens=2, temperature=0)
        assert [(e["code"], e["id"]) for e in result.errors] == [("context_overflow", "c2")] and result.done is None
        assert "tool results" in result.errors[0]["message"]
        history = await history_turns(client)
        assert [t["role"] for t in history] == ["user", "assistant", "tool"]
        await good_turn(client, "fresh")
