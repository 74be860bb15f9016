"""End to end on the demo engine: a history at the context's edge is trimmed ahead of its next turn, the prompt it
leaves re-prefilled while the engine idles, so the turn that drops old exchanges prefills only its own message."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gateway.client import GatewayClient, TurnResult
from gateway.config import Settings
from gateway.engine.contract import GenerationRequest, GenerationResult, TurnHandle, TurnSink
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from tests.conftest import DemoDirs, RunningServer, start_server, wait_until
from tests.unit.engine.test_engine import Collector

REPLY = {"temperature": 0, "max_tokens": 8, "ignore_eos": True}


def serve(demo_dirs: DemoDirs, trim_ahead: bool) -> RunningServer:
    # A 320-token context fills in a few turns; chunks of 32 make the re-prefill ahead several passes.
    settings = Settings(context_tokens=320, trim_ahead=trim_ahead, engine_prefill_chunk_tokens=32)
    return start_server(demo_dirs.model, settings)


@pytest.fixture(scope="module")
def servers(demo_dirs: DemoDirs) -> Iterator[tuple[RunningServer, RunningServer]]:
    """One server that trims ahead, one that does not."""
    ahead, at_turn = serve(demo_dirs, True), serve(demo_dirs, False)
    yield ahead, at_turn
    ahead.stop()
    at_turn.stop()


class Submissions:
    """Every request a server's engine is handed from now, and each warm-up's result once it ends."""

    def __init__(self, server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.requests: list[GenerationRequest] = []
        self.warm_ups: list[GenerationResult] = []
        submit = server.engine.submit

        def recording(request: GenerationRequest, sink: TurnSink) -> TurnHandle:
            self.requests.append(request)
            if request.warm_up:
                ended = sink.on_done

                def on_done(result: GenerationResult) -> None:
                    self.warm_ups.append(result)
                    ended(result)

                sink.on_done = on_done  # type: ignore[method-assign]
            return submit(request, sink)

        monkeypatch.setattr(server.engine, "submit", recording)


def trims_ahead(server: RunningServer) -> float:
    body = requests.get(f"{server.http_url}/metrics", timeout=10).text
    values = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}
    return values["gateway_trims_ahead_total"]


def question(n: int) -> str:
    return f"Question number {n}: tell me something about the hills, the rivers and the weather there today."


async def until_a_turn_drops(client: GatewayClient, server: RunningServer, seen: Submissions) -> tuple[TurnResult, int]:
    """Turns until one drops old exchanges: it, and how many trims ahead the server made before it (each turn's
    awaited to its warm-up's end first, as an idle engine would finish it before a client's next turn; a turn
    arriving while one is still planned cancels it)."""
    assert server.app.state.runtime.turns is not None and client.ready is not None
    warm_ups, session = server.app.state.runtime.turns.warm_ups, client.ready["session"]
    for n in range(1, 40):
        await wait_until(lambda: session not in warm_ups)
        result = await client.turn(f"t{n}", question(n), **REPLY)
        assert result.accepted is not None and result.done is not None
        if result.accepted["dropped_turns"] > 0:
            return result, int(trims_ahead(server))
    raise AssertionError("no turn dropped an exchange")


def prefilled(result: TurnResult) -> int:
    assert result.done is not None
    usage: dict[str, Any] = result.done["usage"]
    return int(usage["prompt_tokens"]) - int(usage.get("cached_tokens", 0))


async def test_the_turn_after_a_trim_ahead_prefills_only_its_message_and_replies_as_cold(
    servers: tuple[RunningServer, RunningServer], monkeypatch: pytest.MonkeyPatch, demo_dirs: DemoDirs
) -> None:
    """On the server that trims ahead, the turn that drops old exchanges (it says so in `accepted`, as ever) reads
    the prompt re-prefilled ahead, to its message: it prefills that message only, and its greedy reply is the one
    the engine gives that prompt cold. On the other, the turn that drops prefills its whole prompt again."""
    ahead, at_turn = servers
    seen = Submissions(ahead, monkeypatch)
    async with GatewayClient(ahead.ws_url) as client:
        dropping, trims = await until_a_turn_drops(client, ahead, seen)
    assert trims >= 1
    warm_up = [request for request in seen.requests if request.warm_up][-1]
    asked = seen.requests[-1]
    assert not asked.warm_up and warm_up.messages[:-1] == asked.messages[:-1] and warm_up.messages[-1].text == ""
    assert seen.warm_ups and seen.warm_ups[-1].finish_reason == "length"
    own = prefilled(dropping)
    assert own <= 40 < dropping.done["usage"]["prompt_tokens"]  # type: ignore[index]

    cold = LocalEngine(load_model(demo_dirs.model), kv_cache_bytes=0)
    cold.start()
    try:
        sink = Collector()
        cold.submit(GenerationRequest(asked.messages, asked.params), sink)
        assert (await asyncio.wait_for(sink.done, 60)).text == dropping.text
    finally:
        await asyncio.to_thread(cold.stop)

    other = Submissions(at_turn, monkeypatch)
    async with GatewayClient(at_turn.ws_url) as client:
        dropped, trims = await until_a_turn_drops(client, at_turn, other)
    assert trims == 0 and not any(request.warm_up for request in other.requests)
    assert prefilled(dropped) > 4 * own
