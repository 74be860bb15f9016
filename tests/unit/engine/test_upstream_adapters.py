"""Adapters at run time behind upstreams: loads and unloads forwarded to vLLM's endpoints on every replica."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from gateway.engine.contract import GenerationRequest, SamplingParams
from gateway.engine.upstream.engine import UpstreamEngine
from gateway.errors import ErrorCode, GatewayError
from tests.conftest import wait_until
from tests.unit.engine.test_upstream_engine import Collect, engine_for, request, run
from tests.upstream_fake import FakeUpstream


@pytest.fixture
def fakes() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    servers = (FakeUpstream(), FakeUpstream())
    yield servers
    for server in servers:
        server.stop()


def on(adapter: str, max_tokens: int = 3) -> GenerationRequest:
    return GenerationRequest(request().messages, SamplingParams(max_tokens=max_tokens), adapter=adapter, affinity="s1")


async def refused(engine: UpstreamEngine, name: str, path: str) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await engine.load_adapter(name, path)
    return caught.value


async def test_a_load_and_an_unload_reach_every_replica(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    """Each replica loads the adapter; a turn on it asks the upstream for the adapter's model id; the unload
    reaches each replica, and the adapter is listed only in between."""
    engine = engine_for(*(fake.url for fake in fakes))
    await engine.load_adapter("tuned", "/ok/tuned")
    assert engine.adapters == ("tuned",) and [fake.loras for fake in fakes] == [{"tuned": "/ok/tuned"}] * 2
    result, _ = await run(engine, on("tuned"))
    assert result.finish_reason == "length" and [m for fake in fakes for m in fake.chat_models] == ["tuned"]
    await engine.unload_adapter("tuned")
    assert engine.adapters == () and [fake.loras for fake in fakes] == [{}, {}]


async def test_a_replica_refusing_is_bad_adapter_and_undone_on_the_others(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    """The upstream's refusal is `bad_adapter` with its message; a replica that took the adapter drops it again."""
    engine = engine_for(*(fake.url for fake in fakes))
    fakes[0].loras["tuned"] = "/elsewhere"  # the second replica is fine; the first refuses the name
    await engine.load_adapter("other", "/ok/other")
    error = await refused(engine, "tuned", "/ok/tuned")
    assert (error.code, error.field) == (ErrorCode.BAD_ADAPTER, "path") and "Loading lora tuned failed" in error.message
    assert "tuned" not in fakes[1].loras and engine.adapters == ("other",)
    error = await refused(engine, "bad", "/missing")
    assert error.code is ErrorCode.BAD_ADAPTER and "No adapter found for /missing" in error.message


async def test_an_upstream_without_runtime_lora_says_how_to_start_it(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    """A vLLM whose adapter endpoints are missing (404): `bad_adapter` naming the flag and variable it needs."""
    fakes[0].mode = "no_lora"
    error = await refused(engine_for(fakes[0].url), "tuned", "/ok/tuned")
    assert error.code is ErrorCode.BAD_ADAPTER and "--enable-lora" in error.message
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in error.message


async def test_an_unload_waits_for_the_turns_running_on_the_adapter(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    """From the unload's start a turn naming the adapter is `not_found`; the running one streams to its end, and
    only then does the upstream hear the unload."""
    fake = fakes[0]
    engine = engine_for(fake.url)
    await engine.load_adapter("tuned", "/ok/tuned")
    fake.mode = "paced"
    sink = Collect()
    engine.submit(on("tuned", max_tokens=20), sink)
    while not sink.tokens:
        await asyncio.sleep(0.005)
    unloading = asyncio.create_task(engine.unload_adapter("tuned"))
    await asyncio.sleep(0)
    assert engine.unloading("tuned") and engine.adapters == ()
    with pytest.raises(GatewayError) as late:
        engine.submit(on("tuned"), Collect())
    await unloading
    result = await sink.done
    assert late.value.code is ErrorCode.NOT_FOUND
    assert (result.finish_reason, result.completion_tokens) == ("length", 20)
    assert fake.events == ["load tuned", "end tuned", "unload tuned"]


def after(events: list[str], mark: str) -> list[str]:
    return events[events.index(mark) + 1 :]


async def test_a_replica_back_from_a_restart_gets_the_adapters_again_before_turns_on_them(
    fakes: tuple[FakeUpstream, FakeUpstream],
) -> None:
    """A replica that restarts (down, then back without the run-time adapters) is given them again by the health
    check before it takes a turn on one: every turn meanwhile goes to the other replica and finishes."""
    engine = engine_for(*(fake.url for fake in fakes), health_interval_s=0.05)
    await engine.load_adapter("tuned", "/ok/tuned")
    await run(engine, on("tuned"))
    home = next(fake for fake in fakes if fake.chat_models)
    replica = next(r for r in engine.replicas.replicas if r.url == home.url)
    home.mode, home.loras = "down", {}
    home.events.append("restart")
    await wait_until(lambda: replica not in engine.replicas.up)
    home.mode = "ok"
    results = []
    while "load tuned" not in after(home.events, "restart"):
        results.append((await run(engine, on("tuned", max_tokens=1)))[0])
    await wait_until(lambda: replica in engine.replicas.up)
    results.append((await run(engine, on("tuned")))[0])
    assert all(result.finish_reason == "length" for result in results) and results
    assert after(home.events, "restart") == ["load tuned", "end tuned"] and not replica.lacking


async def test_a_replica_that_lost_the_adapters_unseen_gets_them_again(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    """A restart between two health checks (never seen down) shows in the replica's models: the adapters it no
    longer lists are loaded on it again, and one unloaded meanwhile is not."""
    engine = engine_for(*(fake.url for fake in fakes), health_interval_s=0.05)
    await engine.load_adapter("tuned", "/ok/tuned")
    await engine.load_adapter("other", "/ok/other")
    await engine.unload_adapter("other")
    fakes[0].loras = {}
    fakes[0].events.append("restart")
    await wait_until(lambda: "tuned" in fakes[0].loras)
    assert after(fakes[0].events, "restart") == ["load tuned"] and fakes[1].loras == {"tuned": "/ok/tuned"}
    await engine.unload_adapter("tuned")
    assert [fake.loras for fake in fakes] == [{}, {}]
