"""The upstream engine against a scripted OpenAI-compatible server: retries, overload, deadlines, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from gateway.engine.contract import ChatMessage, GenerationRequest, GenerationResult, SamplingParams
from gateway.engine.upstream.discovery import UpstreamInfo
from gateway.engine.upstream.engine import UpstreamEngine, UpstreamOptions
from gateway.engine.upstream.replicas import ReplicaSet
from gateway.engine.upstream.turn import Deadlines
from gateway.errors import ErrorCode, RetryLater
from tests.conftest import wait_until
from tests.upstream_fake import FakeUpstream
from tests.vllm_support import free_port


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    servers = (FakeUpstream(), FakeUpstream())
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def healthy(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    for fake in fakes:
        fake.mode = "ok"


def engine_for(*urls: str, gap_s: float = 5.0, health_interval_s: float = 60.0) -> UpstreamEngine:
    info = UpstreamInfo("fake", 1024, (), vllm=False, vision=False, vision_detail="")
    # 10 s: loopback connects are instant, but a loaded CI machine once took over 1 s and a load went `overloaded`.
    options = UpstreamOptions(connect_timeout_s=10.0, deadlines=Deadlines(5.0, gap_s), health_interval_s=health_interval_s)
    return UpstreamEngine(info, ReplicaSet(list(urls)), options)


class Collect:
    def __init__(self) -> None:
        self.done: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
        self.tokens: list[str] = []

    def on_queued(self, position: int) -> None:
        pass

    def on_token(self, text: str) -> None:
        self.tokens.append(text)

    def on_done(self, result: GenerationResult) -> None:
        self.done.set_result(result)


def request(max_tokens: int = 3, key: str | None = "s1") -> GenerationRequest:
    return GenerationRequest([ChatMessage("user", "hi")], SamplingParams(max_tokens=max_tokens), affinity=key)


async def run(engine: UpstreamEngine, req: GenerationRequest | None = None) -> tuple[GenerationResult, Collect]:
    sink = Collect()
    engine.submit(req or request(), sink)
    return await asyncio.wait_for(sink.done, 10), sink


async def test_streams_tokens_usage_and_timing(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    """Chunks become on_token calls (those of one network read together); usage comes from the upstream,
    timing from the gateway's clock."""
    result, sink = await run(engine_for(fakes[0].url))
    assert "".join(sink.tokens) == result.text == " w0 w1 w2"
    assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("length", 5, 3)
    assert result.ttft_ms is not None and result.total_ms >= result.ttft_ms


async def test_5xx_before_first_token_retries_on_another_replica(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    """A 500 (or a refused connection) before the first token: the turn runs on the other replica."""
    fakes[0].mode = fakes[1].mode = "500"
    engine = engine_for(fakes[0].url, fakes[1].url)
    failed, _ = await run(engine)
    assert failed.finish_reason == "error"  # both failed: no third try
    fakes[1].mode = "ok"
    for replica in engine.replicas.replicas:
        engine.replicas.mark_up(replica)
    result, _ = await run(engine)
    assert result.finish_reason == "length" and result.error is None


async def test_connect_failure_moves_to_the_live_replica(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    """An unreachable replica is marked down and the turn succeeds on the other."""
    engine = engine_for(f"http://127.0.0.1:{free_port()}", fakes[0].url)
    results = [(await run(engine, request(key=f"k{i}")))[0] for i in range(4)]
    assert all(r.finish_reason == "length" for r in results)
    assert [r.state.value for r in engine.replicas.replicas] in (["down", "up"], ["up", "up"])


async def test_429_means_overloaded_with_the_upstreams_retry_after(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    """A 429 marks the replica full for its Retry-After; the next submit is refused at once with it."""
    fakes[0].mode = "429"
    engine = engine_for(fakes[0].url)
    result, _ = await run(engine)
    assert result.finish_reason == "error" and result.error and "overloaded" in result.error
    with pytest.raises(RetryLater) as refused:
        engine.submit(request(), Collect())
    # what is left of the upstream's 7 s: how much is left depends on how long the machine took since
    assert refused.value.code is ErrorCode.OVERLOADED and 0 < refused.value.retry_after_ms <= 7000


async def test_context_error_is_not_retried(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    fakes[0].mode = fakes[1].mode = "context"
    engine = engine_for(fakes[0].url, fakes[1].url)
    result, _ = await run(engine)
    assert result.finish_reason == "error" and result.error and "context length" in result.error
    assert fakes[0].requests + fakes[1].requests >= 1 and all(r.state.value == "up" for r in engine.replicas.replicas)


async def test_token_gap_deadline_ends_the_turn_with_error(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    """After the first token, a stalled stream ends with `error` and keeps the text so far."""
    fakes[0].mode = "stall"
    result, _ = await run(engine_for(fakes[0].url, gap_s=0.3))
    assert result.finish_reason == "error" and result.text == " w0" and "next token" in (result.error or "")


async def test_cancel_before_the_first_token(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    """The handle's event stops a turn still waiting for its first token: it ends cancelled, with no
    text, long before the upstream's first token (30 s away)."""
    fakes[0].mode = "slow"
    engine = engine_for(fakes[0].url)
    sink = Collect()
    handle = engine.submit(request(), sink)
    await asyncio.sleep(0.2)
    handle.cancel()
    result = await asyncio.wait_for(sink.done, 15)
    assert result.finish_reason == "cancelled" and result.text == ""


async def test_a_slow_health_answer_does_not_mark_a_replica_down(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    """A replica that streams but answers /health after the timeout is busy, not gone; a refused one is down."""
    fakes[0].mode = "slow_health"
    engine = engine_for(fakes[0].url, f"http://127.0.0.1:{free_port()}", health_interval_s=0.2)
    checked = fakes[0].health_checks  # the servers outlive each test's engine
    result, _ = await run(engine, request(key=None))
    # rounds of checks run one after another, each applied when its slowest check times out: a second
    # check of the slow replica means a whole round (its slow check included) has been applied
    await wait_until(lambda: fakes[0].health_checks >= checked + 2, timeout_s=60)
    assert result.finish_reason == "length"
    assert [r.state.value for r in engine.replicas.replicas] == ["up", "down"]
    engine.stop()


async def test_a_submitted_turn_is_admitted_at_once(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    """The upstream engine queues nothing of its own: a turn is `admitted` (an active one, never waiting) from
    `submit`, before its first token."""
    fakes[0].mode = "slow"
    engine = engine_for(fakes[0].url)
    sink = Collect()
    handle = engine.submit(request(), sink)
    assert handle.admitted.is_set() and engine.load().waiting == 0 and engine.load().active == 1
    handle.cancel()
    assert (await asyncio.wait_for(sink.done, 15)).finish_reason == "cancelled"
