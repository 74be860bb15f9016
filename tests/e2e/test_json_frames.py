"""JSON text frames: one typed pass decodes them, and `max_json_frame_bytes` bounds the event loop's work on
one; a bigger JSON frame is `too_large` and the connection goes on (unit and real server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from gateway.client import GatewayClient
from gateway.config import Settings
from gateway.errors import ErrorCode, GatewayError
from gateway.ws import protocol as p
from tests.conftest import DemoDirs, RunningServer, start_server
from tests.e2e.test_hardening_input import UNLIMITED_RATE, assert_usable, expect_error, prime
from tests.loop_watch import watching

MiB = 1024 * 1024


def schema_frame(nbytes: int) -> dict[str, Any]:
    """A turn whose schema is about `nbytes` of JSON of small values, in lists msgpack frames may carry."""
    row = [f"v{i}" for i in range(500)] + list(range(500))  # about 6 kB of JSON
    rows = [row] * max(1, nbytes // 6400)
    schema = {"enum": [rows[i : i + 1000] for i in range(0, len(rows), 1000)]}
    response_format = {"type": "json_schema", "json_schema": {"name": "big", "schema": schema}}
    return {"type": "turn", "id": "big", "text": "hi", "options": {"response_format": response_format, "max_tokens": 1}}


def test_a_json_frame_over_the_bound_is_too_large_before_it_is_parsed() -> None:
    """Past the bound, even text that is not JSON at all is `too_large`; at the bound it is parsed."""
    with pytest.raises(GatewayError) as refused:
        p.check_json_size("x" * 1001, 1000)
    assert refused.value.code is ErrorCode.TOO_LARGE and "max_json_frame_bytes" in refused.value.message
    p.check_json_size("x" * 1000, 1000)


def test_the_bound_counts_utf8_bytes() -> None:
    """Non-ASCII text counts its UTF-8 bytes, not its characters."""
    p.check_json_size("é" * 500, 1000)
    with pytest.raises(GatewayError):
        p.check_json_size("é" * 501, 1000)


def test_one_typed_pass_decodes_what_the_checks_allow() -> None:
    """A big schema of small values decodes whole; the 64-bit bound on its integers still holds."""
    frame = schema_frame(MiB)
    decoded = p.decode(json.dumps(frame))
    assert isinstance(decoded, p.TurnFrame) and decoded.options is not None
    assert isinstance(decoded.options.response_format, p.JsonSchemaFormat)
    assert decoded.options.response_format.json_schema.schema == frame["options"]["response_format"]["json_schema"]["schema"]
    frame["options"]["response_format"]["json_schema"]["schema"]["enum"][0][0][-1] = 2**64
    with pytest.raises(GatewayError) as refused:
        p.decode(json.dumps(frame))
    assert refused.value.code is ErrorCode.INVALID_FIELD and "64-bit" in refused.value.message


@pytest.fixture(scope="module")
def server(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, Settings(**UNLIMITED_RATE))
    yield running
    running.stop()


async def test_a_json_frame_over_the_bound_gets_too_large_and_the_connection_goes_on(server: RunningServer) -> None:
    """`ready.limits` names the bound; a JSON frame over it is `too_large`, nothing changes, and the same
    frame as msgpack is read (its schema then refused by max_grammar_bytes, an ordinary answer)."""
    limit = server.settings.max_json_frame_bytes
    async with GatewayClient(server.ws_url) as client:
        assert client.ready["limits"]["max_json_frame_bytes"] == limit
        before = await prime(client)
        await client.ws.send(json.dumps(schema_frame(limit + 64 * 1024)))
        assert "max_json_frame_bytes" in (await expect_error(client, {"too_large"}, None))["message"]
        await assert_usable(client, before)
        await client.ws.send(msgpack.packb(schema_frame(limit + 64 * 1024)))
        assert "max_grammar_bytes" in (await expect_error(client, {"invalid_field"}, "big"))["message"]


async def test_a_json_frame_at_the_bound_costs_the_loop_under_the_limit(server: RunningServer) -> None:
    """The largest JSON frame a client may send, a schema of small values, is parsed and answered without
    any event-loop callback taking 50 ms of CPU (one took 333 ms for 15 MB before)."""
    frame = json.dumps(schema_frame(server.settings.max_json_frame_bytes - 64 * 1024))
    assert len(frame) <= server.settings.max_json_frame_bytes
    async with GatewayClient(server.ws_url) as client:
        await client.request({"type": "ping", "id": "p"})
        with watching(server.thread) as watch:
            await client.ws.send(frame)
            assert "max_grammar_bytes" in (await expect_error(client, {"invalid_field"}, "big"))["message"]
        watch.check()
