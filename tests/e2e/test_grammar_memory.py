"""A schema whose compile needs more memory than grammar_memory_bytes, against a real server: refused, and the server goes on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.client import GatewayClient
from gateway.config import MiB, Settings
from gateway.core import compile_procs
from tests.conftest import DemoDirs, RunningServer, start_server
from tests.e2e.test_grammar_attack import GREEDY, pool, required_format

SMALL_SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}}
SMALL = {"type": "json_schema", "json_schema": {"name": "small", "schema": SMALL_SCHEMA}}


@pytest.fixture(scope="module")
def tight(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    """A server whose compiles may grow their process by 8 MiB (a 9,000-property schema needs about 30)."""
    running = start_server(demo_dirs.model, Settings(turns_per_minute=1e6, grammar_memory_bytes=8 * MiB))
    yield running
    running.stop()


async def refused_and_others_go_on(tight: RunningServer, seed: int) -> None:
    """A heavy schema's turn is `invalid_field` naming grammar_memory_bytes; the same connection's next turn with a
    small schema, and another client's turn, complete."""
    async with GatewayClient(tight.ws_url) as attacker, GatewayClient(tight.ws_url) as other:
        refused = await attacker.turn("big", "x", max_tokens=2, response_format=required_format(seed), **GREEDY)
        small = await attacker.turn("small", "x", max_tokens=2, response_format=SMALL, **GREEDY)
        victim = await other.turn("v", "hello there", max_tokens=2, **GREEDY)
    assert refused.done is None and refused.errors[0]["code"] == "invalid_field"
    assert "grammar_memory_bytes (8 MiB)" in refused.errors[0]["message"]
    assert small.done is not None and small.done["text"].startswith("{")  # held to the schema
    assert victim.done is not None and victim.done["finish_reason"] == "length"


async def test_a_schema_past_the_memory_budget_is_refused_and_the_server_goes_on(tight: RunningServer) -> None:
    """The heavy schema's turn is `invalid_field` naming grammar_memory_bytes and its compile process is
    killed; the same connection's next turn with a small schema, and another client's turn, complete."""
    kills_before = pool(tight).kills
    await refused_and_others_go_on(tight, seed=0)
    assert pool(tight).kills - kills_before == 1


async def test_a_compile_past_its_address_space_cap_is_refused_before_the_watch_sees_it(
    tight: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the RSS watch polling too rarely to act, the compile process's own address-space cap (derived from
    grammar_memory_bytes) ends the heavy compile: `invalid_field` naming the setting, and the same connection and
    another client go on."""
    monkeypatch.setattr(compile_procs, "_POLL_S", 600.0)
    capped_before = pool(tight).capped
    await refused_and_others_go_on(tight, seed=1)
    assert pool(tight).capped - capped_before == 1
