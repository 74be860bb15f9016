"""Upstream failures reach clients as stable codes: 429/503 -> `overloaded` with the upstream's Retry-After,
a context-length refusal -> `context_overflow`; on the engine's result, in WebSocket frames, on the OpenAI API."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2 as httpx
import pytest

from gateway.app import create_app
from gateway.client import GatewayClient
from gateway.config import Settings
from gateway.engine.upstream.engine import UpstreamEngine
from gateway.errors import ErrorCode
from tests.conftest import serve_app
from tests.unit.engine.test_upstream_engine import engine_for, request, run
from tests.upstream_fake import FakeUpstream


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def engine(fake: FakeUpstream) -> UpstreamEngine:
    return engine_for(fake.url)


@pytest.fixture(scope="module")
def gateway_url(engine: UpstreamEngine) -> Iterator[str]:
    """The gateway over the fake upstream, both front ends."""
    with serve_app(create_app(Settings(), engine=engine)) as url:
        yield url


@pytest.fixture(autouse=True)
def healthy(fake: FakeUpstream, engine: UpstreamEngine) -> None:
    """Each test starts with a well-behaved upstream that no earlier test left marked full."""
    fake.mode = "ok"
    for replica in engine.replicas.replicas:
        replica.overloaded_until = 0.0


@pytest.mark.parametrize(("mode", "retry_after_ms"), [("429", 7000), ("503", 3000)])
async def test_overloaded_result_carries_the_upstreams_retry_after(fake: FakeUpstream, mode: str, retry_after_ms: int) -> None:
    fake.mode = mode
    result, _ = await run(engine_for(fake.url))
    assert result.finish_reason == "error" and result.error_code is ErrorCode.OVERLOADED
    assert result.retry_after_ms == retry_after_ms


async def test_overloaded_error_chunk_mid_stream(fake: FakeUpstream) -> None:
    """An error chunk naming 503 after the first word: `overloaded`, the word kept, no Retry-After to pass on
    but the default second."""
    fake.mode = "overloaded_chunk"
    result, _ = await run(engine_for(fake.url), request(max_tokens=5))
    assert result.finish_reason == "error" and result.text == " w0"
    assert result.error_code is ErrorCode.OVERLOADED and result.retry_after_ms == 1000


async def test_context_length_refusal_is_context_overflow(fake: FakeUpstream) -> None:
    fake.mode = "context"
    result, _ = await run(engine_for(fake.url))
    assert result.finish_reason == "error" and result.error_code is ErrorCode.CONTEXT_OVERFLOW
    assert result.retry_after_ms is None and "maximum context length" in (result.error or "")


@pytest.mark.parametrize(("mode", "code", "retry_after_ms"), [("429", "overloaded", 7000), ("context", "context_overflow", None)])
async def test_websocket_error_frame_then_done(
    fake: FakeUpstream, gateway_url: str, mode: str, code: str, retry_after_ms: int | None
) -> None:
    """The turn is accepted, then fails upstream: an `error` frame with the code (and Retry-After in ms),
    then `done` with finish_reason `error`; the connection stays open."""
    fake.mode = mode
    async with GatewayClient(gateway_url.replace("http", "ws") + "/ws") as client:
        result = await client.turn("t1", "hello", max_tokens=4)
        pong = await client.request({"type": "ping", "id": "p1"})
    assert result.accepted and result.done and result.done["finish_reason"] == "error"
    [error] = result.errors
    assert (error["code"], error["id"], error.get("retry_after_ms")) == (code, "t1", retry_after_ms)
    assert pong["type"] == "pong"


@pytest.mark.parametrize(
    ("mode", "status", "code", "retry_after"), [("503", 503, "overloaded", "3"), ("context", 400, "context_overflow", None)]
)
async def test_openai_status_and_retry_after(
    fake: FakeUpstream, gateway_url: str, mode: str, status: int, code: str, retry_after: str | None
) -> None:
    """The OpenAI API answers through the one status table, with the upstream's Retry-After as its header."""
    fake.mode = mode
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(gateway_url + "/v1/chat/completions", json=body)
    assert response.status_code == status and response.json()["error"]["code"] == code
    assert response.headers.get("retry-after") == retry_after


@pytest.mark.parametrize(("mode", "failed"), [("ok", 0), ("503", 4)])
async def test_bench_counts_each_failed_turn_once(fake: FakeUpstream, gateway_url: str, mode: str, failed: int) -> None:
    """`gateway bench` through a failing upstream finishes, and a turn with an `error` and a `done` is one error."""
    from gateway.bench.run import BenchConfig, run_load

    fake.mode = mode
    config = BenchConfig(url=gateway_url.replace("http", "ws") + "/ws", sessions=2, turns=2, max_tokens=4, progress=False)
    report = await run_load(config)
    assert (report.turns, report.errors) == (4, failed)
    assert report.completion_tokens == (16 if failed == 0 else 0)
