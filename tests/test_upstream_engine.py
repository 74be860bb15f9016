"""The upstream engine against a scripted OpenAI-compatible server: retries, overload, deadlines, cancel."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.engine.types import ChatMessage, GenerationRequest, GenerationResult, SamplingParams
from gateway.engine.upstream.discovery import UpstreamInfo
from gateway.engine.upstream.engine import UpstreamEngine, UpstreamOptions
from gateway.engine.upstream.replicas import ReplicaSet
from gateway.engine.upstream.turn import Deadlines
from gateway.errors import ErrorCode, RetryLater
from tests.vllm_support import free_port


class FakeUpstream:
    """Streams `tokens` words, or misbehaves as `mode` says: 429, 500, context, stall, slow."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests = 0
        self.port = free_port()
        app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"]), Route("/health", self.health)])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def chat(self, request: Request) -> Response:
        self.requests += 1
        body = await request.json()
        if self.mode == "429":
            return JSONResponse({"error": {"message": "full"}}, 429, headers={"Retry-After": "7"})
        if self.mode == "500":
            return JSONResponse({"error": {"message": "boom"}}, 500)
        if self.mode == "context":
            return JSONResponse({"error": {"message": "This model's maximum context length is 64 tokens"}}, 400)
        return StreamingResponse(self.stream(body["max_tokens"]), media_type="text/event-stream")

    async def stream(self, max_tokens: int) -> AsyncIterator[str]:
        if self.mode == "slow":
            await asyncio.sleep(30)
        for i in range(max_tokens):
            chunk = {"choices": [{"index": 0, "delta": {"content": f" w{i}"}, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n"
            if self.mode == "stall":
                await asyncio.sleep(30)
        usage = {"prompt_tokens": 5, "completion_tokens": max_tokens, "total_tokens": 5 + max_tokens}
        yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'length'}]})}\n\n"
        yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


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


def engine_for(*urls: str, gap_s: float = 5.0) -> UpstreamEngine:
    info = UpstreamInfo("fake", 1024, (), vllm=False, vision=False, vision_detail="")
    options = UpstreamOptions(connect_timeout_s=1.0, deadlines=Deadlines(5.0, gap_s), health_interval_s=60.0)
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
    """Chunks become on_token calls; usage comes from the upstream, timing from the gateway's clock."""
    result, sink = await run(engine_for(fakes[0].url))
    assert sink.tokens == [" w0", " w1", " w2"] and result.text == " w0 w1 w2"
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
    assert refused.value.code is ErrorCode.OVERLOADED and 6000 <= refused.value.retry_after_ms <= 7000


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
    """The handle's event stops a turn still waiting for its first token, within a tick."""
    fakes[0].mode = "slow"
    engine = engine_for(fakes[0].url)
    sink = Collect()
    handle = engine.submit(request(), sink)
    await asyncio.sleep(0.2)
    handle.cancel()
    cancelled_at = time.monotonic()
    result = await asyncio.wait_for(sink.done, 2)
    assert result.finish_reason == "cancelled" and time.monotonic() - cancelled_at < 0.5
