"""msgpack frames of megabytes of small values, on a real server: decoded a slice at a time and bounded in
values, so no event-loop callback spends 50 ms of CPU on the largest a client may send; the connection goes on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from gateway.client import GatewayClient
from gateway.config import Settings
from gateway.core.json_bounds import MAX_JSON_VALUES
from gateway.ws.msgpack_slices import MAX_FRAME_VALUES
from tests.conftest import DemoDirs, RunningServer, start_server
from tests.e2e.test_hardening_input import UNLIMITED_RATE, assert_usable, expect_error, prime
from tests.loop_watch import watching


@pytest.fixture(scope="module")
def server(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, Settings(**UNLIMITED_RATE, inbound_bytes_per_second=64 * 1024 * 1024))
    yield running
    running.stop()


def densest_frame(max_bytes: int) -> bytes:
    """A turn whose schema is 1-byte integers in lists of 1,024 (the most values a msgpack frame of
    `max_bytes` can carry), just under `max_bytes`."""
    row = [7] * 1024  # 1,027 bytes: the header and a byte a value
    rows = (max_bytes - 4096) // 1027
    schema: dict[str, Any] = {"enum": [[row] * min(1024, rows - at) for at in range(0, rows, 1024)]}
    response_format = {"type": "json_schema", "json_schema": {"name": "dense", "schema": schema}}
    frame = bytes(msgpack.packb({"type": "turn", "id": "dense", "text": "hi", "options": {"response_format": response_format}}))
    assert max_bytes - 8192 < len(frame) <= max_bytes
    return frame


async def test_the_densest_msgpack_frame_at_the_cap_costs_no_callback_50_ms(server: RunningServer) -> None:
    """16 million 1-byte values in one frame of max_frame_bytes (300 ms in one callback before) are
    unpacked a slice at a time and refused as `bad_frame` (too wide) once a million are built: no event-loop
    callback takes 50 ms of CPU, and the connection's session is unchanged and usable."""
    frame = densest_frame(server.settings.max_frame_bytes)
    async with GatewayClient(server.ws_url, compression=None) as client:
        before = await prime(client)
        with watching(server.thread) as watch:
            await client.ws.send(frame)
            refusal = await expect_error(client, {"bad_frame"}, None)
        watch.check()
        assert f"more than {MAX_FRAME_VALUES} arrays, maps and entries" in refusal["message"]
        await assert_usable(client, before)


async def test_a_frame_of_free_form_json_under_the_frame_bound_costs_no_callback_50_ms(server: RunningServer) -> None:
    """A schema of more entries than MAX_JSON_VALUES (but fewer than the frame's bound), every one built and
    checked a slice at a time: `invalid_field` naming the bound and echoing the id, no callback over 50 ms."""
    rows = [[7] * 1023] * (MAX_JSON_VALUES // 1024 + 64)
    response_format = {"type": "json_schema", "json_schema": {"name": "wide", "schema": {"enum": rows}}}
    frame = msgpack.packb({"type": "turn", "id": "wide", "text": "hi", "options": {"response_format": response_format}})
    async with GatewayClient(server.ws_url, compression=None) as client:
        with watching(server.thread) as watch:
            await client.ws.send(frame)
            refusal = await expect_error(client, {"invalid_field"}, "wide")
        watch.check()
        assert f"more than {MAX_JSON_VALUES} values" in refusal["message"]
