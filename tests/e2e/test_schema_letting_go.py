"""An accepted schema of half a million values, on a real server: letting it go later holds up no other client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway.client import GatewayClient
from gateway.config import MiB, Settings
from gateway.core.format_keys import _REMEMBERED
from tests.conftest import DemoDirs, RunningServer, start_server, wait_until
from tests.e2e.test_grammar_attack import GREEDY, pool, wide_format
from tests.loop_watch import watching


@pytest.fixture(scope="module")
def server(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    """A server whose max_grammar_bytes admits a schema of 500k values (the default, 1 MiB, about 250k)."""
    settings = Settings(
        turns_per_minute=1e6,
        frames_per_second=1e6,
        inbound_bytes_per_second=64 * MiB,
        max_grammar_bytes=16 * MiB,
        grammar_compiles_per_minute=1e6,
        grammar_compiles_per_minute_per_client=1e6,
    )
    running = start_server(demo_dirs.model, settings)
    yield running
    running.stop()


def carrying(values: dict[str, Any]) -> dict[str, Any]:
    """A one-property schema whose `default` carries `values` (llguidance compiles it in about a second)."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "default": values}
    return {"type": "json_schema", "json_schema": {"name": "big", "schema": schema}}


def small(seed: int) -> dict[str, Any]:
    schema = {"type": "object", "properties": {f"n{seed}": {"type": "integer"}}}
    return {"type": "json_schema", "json_schema": {"name": f"s{seed}", "schema": schema}}


async def test_a_replaced_schema_of_half_a_million_values_is_let_go_in_slices(server: RunningServer) -> None:
    """`configure` with a 500k-value schema (accepted), then replaced; once its last holders have gone (the
    session's defaults, and the format-key cache's entry after as many other formats), it is let go a
    slice at a time: no event-loop callback from then on takes 50 ms of CPU, and another turn completes."""
    big = carrying(wide_format(0, 250)["json_schema"]["schema"]["properties"])
    async with GatewayClient(server.ws_url, compression=None) as client:
        # Watched from its acceptance on, as the tool test below: what this test guarantees is the letting go.
        # Taking it in now has no step over 15 ms; the `configured` reply echoes the schema, though, and
        # encoding it (for the replay journal's count, then to send) takes 25-35 ms a time: a known gap.
        assert (await client.request({"type": "configure", "response_format": big}))["type"] == "configured"
        with watching(server.thread) as watch:
            assert len(pool(server).kept) == 1
            del big
            for seed in range(_REMEMBERED + 1):  # each replaces the last; the key cache forgets the big one
                assert (await client.request({"type": "configure", "response_format": small(seed)}))["type"] == "configured"
            await wait_until(lambda: len(pool(server).kept) == 0)
            after = await client.turn("after", "hello", max_tokens=2, **GREEDY)
    assert after.done is not None
    print(f"\n[schema drop] slowest loop callback {watch.slowest_ms:.1f} ms CPU of {watch.callbacks}; over: {watch.slow}")
    watch.check()


def tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


async def test_replaced_tool_parameters_of_half_a_million_values_are_let_go_in_slices(server: RunningServer) -> None:
    """`configure` with a tool whose parameters carry 500k values (accepted: its forced call's grammar is past
    256 KiB, so the pool keeps them), then with a small tool instead: once the session's defaults have let go
    of them, they are let go a slice at a time (no event-loop callback from the replacement on takes 50 ms
    of CPU), and another turn completes."""
    values = wide_format(0, 250)["json_schema"]["schema"]["properties"]
    big = [tool("lookup", {"type": "object", "properties": {"n": {"type": "integer"}}, "default": values})]
    kept_before = len(pool(server).kept)
    async with GatewayClient(server.ws_url, compression=None) as client:
        assert (await client.request({"type": "configure", "tools": big}))["type"] == "configured"
        assert len(pool(server).kept) == kept_before + 1
        del big, values
        with watching(server.thread) as watch:
            small_tools = [tool("lookup", {"type": "object", "properties": {"n": {"type": "integer"}}})]
            assert (await client.request({"type": "configure", "tools": small_tools}))["type"] == "configured"
            await wait_until(lambda: len(pool(server).kept) == kept_before)
            after = await client.turn("after", "hello", max_tokens=2, **GREEDY)
    assert after.done is not None
    print(f"\n[tools drop] slowest loop callback {watch.slowest_ms:.1f} ms CPU of {watch.callbacks}; over: {watch.slow}")
    watch.check()
