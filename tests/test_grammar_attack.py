"""Hostile schemas against a real server: compiles stay off the event loop while another client's turns go on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.client import GatewayClient, TurnResult
from gateway.config import Settings
from gateway.engine.constrain import GrammarVocabulary
from tests.conftest import DemoDirs, RunningServer, start_server
from tests.loop_watch import watching

GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def guarded(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    """The default grammar bounds, but a lexer budget that refuses a 650 KB alternation (as the default
    refuses a 1.7 MB one) in half a second, so the attack is quick to run."""
    settings = Settings(turns_per_minute=1e6, frames_per_second=1e6, grammar_lexer_fuel=200_000)
    running = start_server(demo_dirs.model, settings)
    yield running
    running.stop()


def pattern_format(seed: int, words: int = 60_000) -> dict[str, Any]:
    """A distinct ~650 KB `pattern` schema, more than the lexer budget allows."""
    pattern = "(" + "|".join(f"w{seed}x{i}" for i in range(words)) + ")"
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": pattern}}, "required": ["a"]}
    return {"type": "json_schema", "json_schema": {"name": f"p{seed}", "schema": schema}}


def required_format(seed: int, count: int = 9_000) -> dict[str, Any]:
    """A distinct schema of `count` required integer properties: heavy (about a second), but accepted."""
    properties = {f"k{seed}_{i}": {"type": "integer"} for i in range(count)}
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {"type": "json_schema", "json_schema": {"name": f"r{seed}", "schema": schema}}


def vocabulary(server: RunningServer) -> GrammarVocabulary:
    grammars = server.engine.grammars
    assert grammars is not None
    return grammars


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
    and each schema compiled once: sent again, the refusals come from the cache."""
    compiled_before = vocabulary(guarded).compiles
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
    assert vocabulary(guarded).compiles - compiled_before == codes.count("invalid_field")
    print(f"\n[grammar] {len(victims)} victim turns; slowest loop callback {watch.slowest_ms:.1f} ms CPU of {watch.callbacks}")
    watch.check()
