"""Hostile schemas against a real server: compiles stay off the event loop while another client's turns go on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.client import GatewayClient, TurnResult
from gateway.config import Settings
from gateway.core.grammar_pool import GrammarPool
from gateway.engine.local.constrain import GrammarVocabulary
from tests.conftest import DemoDirs, RunningServer, start_server
from tests.loop_watch import watching

GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def guarded(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    """The default grammar bounds, but less lexer fuel: it refuses a 530 KB alternation (as the default
    refuses a 1.7 MB one) in half a second, so the attack is quick to run, and still takes 9,000 properties.
    Every test here connects from one address, so no per-address compile rate (test_grammar_pool.py's): at the
    default, one test's twelve compiles left the next too few on a machine that ran them within seconds."""
    settings = Settings(
        turns_per_minute=1e6, frames_per_second=1e6, grammar_lexer_fuel=300_000, grammar_compiles_per_minute_per_client=1e6
    )
    running = start_server(demo_dirs.model, settings)
    yield running
    running.stop()


def pattern_format(seed: int, words: int = 60_000) -> dict[str, Any]:
    """A distinct ~650 KB `pattern` schema, more than the lexer budget allows."""
    pattern = "(" + "|".join(f"w{seed}x{i}" for i in range(words)) + ")"
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": pattern}}, "required": ["a"]}
    return {"type": "json_schema", "json_schema": {"name": f"p{seed}", "schema": schema}}


def required_format(seed: int, groups: int = 9, each: int = 1_000) -> dict[str, Any]:
    """A distinct schema of 9,000 required integer properties (in groups, as a msgpack map holds at most
    1,024 entries): heavy (about a second of compiling), but accepted."""

    def group(g: int) -> dict[str, Any]:
        properties = {f"k{seed}_{g}_{i}": {"type": "integer"} for i in range(each)}
        return {"type": "object", "properties": properties, "required": list(properties)}

    properties = {f"g{g}": group(g) for g in range(groups)}
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {"type": "json_schema", "json_schema": {"name": f"r{seed}", "schema": schema}}


def vocabulary(server: RunningServer) -> GrammarVocabulary:
    grammars = server.engine.grammars
    assert grammars is not None
    return grammars


def pool(server: RunningServer) -> GrammarPool:
    turns = server.app.state.runtime.turns
    assert turns is not None
    return turns.grammars


async def victim_turns(url: str, stop: asyncio.Event) -> list[TurnResult]:
    """Another client's turns, one after another, until `stop`."""
    results: list[TurnResult] = []
    async with GatewayClient(url) as victim:
        while not stop.is_set() or len(results) < 3:
            results.append(await victim.turn(f"v{len(results)}", "hello there", max_tokens=4, **GREEDY))
    return results


async def attack(url: str, formats: list[dict[str, Any]], tag: str) -> list[TurnResult]:
    """One connection's turns, each with the next format; the turns' answers."""
    async with GatewayClient(url) as attacker:
        return [
            await attacker.turn(f"{tag}{n}", "x", max_tokens=2, response_format=fmt, **GREEDY) for n, fmt in enumerate(formats)
        ]


async def test_twelve_huge_pattern_schemas_are_refused_off_the_loop(guarded: RunningServer) -> None:
    """Twelve distinct huge `pattern` schemas from 4 connections: each answered `invalid_field` naming the
    lexer budget (or `rate_limited`), no loop callback takes 50 ms of CPU, the victim's turns all complete,
    and each schema compiled once, in a compile process (the engine compiles none of them): sent again,
    the refusals come from the cache."""
    compiled_before, engine_before = pool(guarded).compiles, vocabulary(guarded).compiles
    formats = [pattern_format(seed) for seed in range(12)]
    with watching(guarded.thread) as watch:
        stop = asyncio.Event()
        victim = asyncio.create_task(victim_turns(guarded.ws_url, stop))
        answers = await asyncio.gather(*(attack(guarded.ws_url, formats[n::4], f"a{n}-") for n in range(4)))
        again = await attack(guarded.ws_url, formats[:4], "again")
        stop.set()
        victims = await victim
    refused = [result for results in answers for result in results]
    codes = [result.errors[0]["code"] for result in refused]
    assert all(result.done is None for result in refused) and set(codes) <= {"invalid_field", "rate_limited"}
    budget = [result.errors[0]["message"] for result in refused if result.errors[0]["code"] == "invalid_field"]
    assert budget and all("grammar_lexer_fuel" in message for message in budget)
    assert [result.errors[0]["code"] for result in again] == ["invalid_field"] * 4  # each connection's first: compiled
    assert all(result.done is not None and result.done["finish_reason"] == "length" for result in victims)
    assert pool(guarded).compiles - compiled_before == codes.count("invalid_field")
    assert vocabulary(guarded).compiles == engine_before
    print(f"\n[grammar] {len(victims)} victim turns; slowest loop callback {watch.slowest_ms:.1f} ms CPU of {watch.callbacks}")
    watch.check()


async def test_heavy_accepted_schemas_compile_once_off_the_loop(guarded: RunningServer) -> None:
    """Three distinct schemas of 9,000 required properties from 3 connections, then each again by `configure`
    on a fourth: all accepted, no loop callback takes 50 ms of CPU, the victim's turns all complete, and the
    engine compiled each schema once, on a compile worker, never on the generation thread (its turns copy
    the compiled matcher: a step never waits on a compile); never more compiles run at once than workers."""
    compiled_before = vocabulary(guarded).compiles
    formats = [required_format(seed) for seed in range(3)]
    with watching(guarded.thread) as watch:
        stop = asyncio.Event()
        victim = asyncio.create_task(victim_turns(guarded.ws_url, stop))
        answers = await asyncio.gather(*(attack(guarded.ws_url, [fmt], f"h{n}-") for n, fmt in enumerate(formats)))
        async with GatewayClient(guarded.ws_url) as again:
            configured = [await again.request({"type": "configure", "response_format": fmt}) for fmt in formats]
            repeated = await again.turn("r", "x", max_tokens=2, **GREEDY)
        stop.set()
        victims = await victim
    assert all(results[0].done is not None and results[0].done["structured"] is False for results in answers)
    assert [frame["type"] for frame in configured] == ["configured"] * 3 and repeated.done is not None
    assert all(result.done is not None and result.done["finish_reason"] == "length" for result in victims)
    assert vocabulary(guarded).compiles - compiled_before == 3
    assert vocabulary(guarded).compiled_on["gateway-generation"] == 0
    assert all(thread.startswith("gateway-grammar") for thread in vocabulary(guarded).compiled_on)
    assert pool(guarded).running.peak <= guarded.settings.grammar_workers  # a process's compile or the engine's, never both
    print(f"\n[grammar] {len(victims)} victim turns; slowest loop callback {watch.slowest_ms:.1f} ms CPU of {watch.callbacks}")
    watch.check()


async def test_ready_announces_the_grammar_bounds(guarded: RunningServer) -> None:
    """`ready.limits` carries max_grammar_bytes and both compile rates, as configured."""
    async with GatewayClient(guarded.ws_url) as client:
        limits = client.ready["limits"]
    s = guarded.settings
    assert limits["max_grammar_bytes"] == s.max_grammar_bytes
    assert limits["grammar_compiles_per_minute"] == s.grammar_compiles_per_minute
    assert limits["grammar_compiles_per_minute_per_client"] == s.grammar_compiles_per_minute_per_client


async def test_huge_tool_parameter_schemas_are_refused_off_the_loop(guarded: RunningServer) -> None:
    """Tools whose parameters schema is a huge `pattern`, in `configure` and in a turn: `invalid_field`
    naming the lexer budget, compiled once on the pool (in a compile process, not by the engine), no loop
    callback over 50 ms of CPU."""
    schema = pattern_format(1000)["json_schema"]["schema"]
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": schema}}]
    compiled_before, engine_before = pool(guarded).compiles, vocabulary(guarded).compiles
    with watching(guarded.thread) as watch:
        async with GatewayClient(guarded.ws_url) as client:
            configured = await client.request({"type": "configure", "id": "c", "tools": tools})
            refused = await client.turn("t", "x", max_tokens=2, tools=tools, tool_choice="required")
    assert configured["type"] == "error" and configured["code"] == "invalid_field"
    assert "grammar_lexer_fuel" in configured["message"]
    assert refused.errors[0]["code"] == "invalid_field" and refused.done is None
    assert pool(guarded).compiles - compiled_before == 1 and vocabulary(guarded).compiles == engine_before
    watch.check()


def wide_format(seed: int, groups: int = 60, each: int = 1000) -> dict[str, Any]:
    """A distinct schema of 60,000 properties in 60 objects (a msgpack map holds at most 1,024 entries):
    its JSON (1.5 MB) is past max_grammar_bytes. (At 250 objects, 500k values, see test_frame_drop.py.)"""

    def group(g: int) -> dict[str, Any]:
        return {"type": "object", "properties": {f"w{seed}_{g}_{i}": {"type": "integer"} for i in range(each)}}

    properties = {f"g{g}": group(g) for g in range(groups)}
    return {"type": "json_schema", "json_schema": {"name": f"w{seed}", "schema": {"type": "object", "properties": properties}}}


async def test_wide_schemas_are_measured_off_the_loop(guarded: RunningServer) -> None:
    """Wide schemas, in turns and in `configure`: `invalid_field` naming max_grammar_bytes before
    anything compiles, and no loop callback takes 50 ms of CPU (the key is hashed a slice at a time, and
    only up to the bound)."""
    compiled_before = pool(guarded).compiles
    with watching(guarded.thread) as watch:
        refused = await attack(guarded.ws_url, [wide_format(seed) for seed in range(3)], "w")
        async with GatewayClient(guarded.ws_url) as client:
            configured = await client.request({"type": "configure", "id": "c", "response_format": wide_format(9)})
    assert all(result.done is None and result.errors[0]["code"] == "invalid_field" for result in refused)
    assert all("max_grammar_bytes" in result.errors[0]["message"] for result in refused)
    assert configured["type"] == "error" and "max_grammar_bytes" in configured["message"]
    assert pool(guarded).compiles == compiled_before
    print(f"\n[grammar] slowest loop callback {watch.slowest_ms:.1f} ms CPU of {watch.callbacks}")
    watch.check()


async def test_tool_parameters_past_max_grammar_bytes_are_refused_before_their_grammar_is_built(guarded: RunningServer) -> None:
    """A tool whose parameters carry 500k values (8 MB of JSON) in `configure`: `invalid_field` naming
    max_grammar_bytes, measured a slice at a time and refused before the grammar's text is built (one
    json.dumps of it all took 226 ms of one callback), so no loop callback takes 50 ms of CPU."""
    values = wide_format(0, 250)["json_schema"]["schema"]["properties"]
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "default": values}
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": schema}}]
    compiled_before = pool(guarded).compiles
    async with GatewayClient(guarded.ws_url, compression=None) as client:
        with watching(guarded.thread) as watch:
            refused = await client.request({"type": "configure", "id": "c", "tools": tools})
    assert refused["type"] == "error" and refused["code"] == "invalid_field"
    assert "max_grammar_bytes" in refused["message"] and pool(guarded).compiles == compiled_before
    watch.check()
