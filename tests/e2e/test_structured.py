"""Structured output on both front ends: response_format constrains the reply and `done` says so."""

from __future__ import annotations

import json

import jsonschema
import pytest
from openai import OpenAI

from gateway.client import GatewayClient
from gateway.core.structured import response_grammar
from gateway.errors import GatewayError
from gateway.ws import protocol as p
from tests.conftest import RunningServer
from tests.e2e.test_openai import api, client, post
from tests.unit.engine.test_constrain import PET_SCHEMA

__all__ = ["api", "client"]  # fixtures shared with test_openai

PET_FORMAT = {"type": "json_schema", "json_schema": {"name": "pet", "schema": PET_SCHEMA, "strict": True}}


async def test_turn_with_json_schema_is_valid_and_marked_structured(server: RunningServer) -> None:
    """A WebSocket turn's response_format yields JSON valid under the schema, with done.structured true."""
    async with GatewayClient(server.ws_url) as ws:
        result = await ws.turn("s1", "a pet", max_tokens=256, temperature=1.0, seed=5, response_format=PET_FORMAT)
    assert result.done and result.done["structured"] is True and result.done["finish_reason"] == "stop"
    jsonschema.validate(json.loads(result.text), PET_SCHEMA)


async def test_configured_format_applies_to_later_turns_and_free_turns_say_null(server: RunningServer) -> None:
    """`configure` sets a session-wide format; a turn may switch back to text; free turns carry structured null."""
    async with GatewayClient(server.ws_url) as ws:
        configured = await ws.request({"type": "configure", "response_format": PET_FORMAT})
        constrained = await ws.turn("c1", "x", max_tokens=256, temperature=1.0, seed=1)
        free = await ws.turn("c2", "x", max_tokens=4, temperature=0, response_format={"type": "text"})
    assert configured["defaults"]["response_format"]["json_schema"]["name"] == "pet"
    assert constrained.done and constrained.done["structured"] is True
    assert isinstance(json.loads(constrained.text), dict)
    assert free.done and free.done["structured"] is None


async def test_unusable_schema_is_invalid_field(server: RunningServer) -> None:
    """A schema the compiler cannot use is refused when it arrives, in configure and in a turn."""
    bad = {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "bogus"}}}
    async with GatewayClient(server.ws_url) as ws:
        configured = await ws.request({"type": "configure", "id": "k", "response_format": bad})
        refused = await ws.turn("b1", "x", max_tokens=4, response_format=bad)
    assert configured["type"] == "error" and configured["code"] == "invalid_field" and configured["id"] == "k"
    assert refused.errors[0]["code"] == "invalid_field" and refused.done is None


def test_regex_format_is_an_extension() -> None:
    """`{"type": "regex"}` compiles; a broken pattern is refused naming the field."""
    assert response_grammar(p.RegexFormat(regex="[0-9]+")) is not None
    with pytest.raises(GatewayError, match=r"response_format\.regex"):
        response_grammar(p.RegexFormat(regex="[0-9"))


def test_openai_json_schema_reply_validates(client: OpenAI) -> None:
    """The SDK's response_format json_schema: the message content parses and validates."""
    reply = client.chat.completions.create(
        model="gateway-demo",
        messages=[{"role": "user", "content": "a pet"}],
        max_tokens=256,
        temperature=1.0,
        seed=3,
        response_format=PET_FORMAT,  # type: ignore[arg-type]
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), PET_SCHEMA)


def test_openai_bad_schema_is_400_naming_response_format(api: RunningServer) -> None:
    body = {"model": "gateway-demo", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}
    response = post(api, body | {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 7}}}})
    assert response.status_code == 400 and response.json()["error"]["param"] == "response_format"
