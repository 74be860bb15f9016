"""Protections on a real server: admission, origin, API key, rate limits, slow consumers, idle
timeout, draining, faults, image URLs and metrics."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import websockets
from PIL import Image
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.client import GatewayClient
from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, start_server, wait_until
from tests.e2e.waits import next_of
from tests.unit.core.test_fetch import HANDLERS, LoopbackServer

GREEDY = {"temperature": 0}


@pytest.fixture
def make_server(demo_dirs: DemoDirs) -> Iterator[Any]:
    started: list[RunningServer] = []

    def make(**settings: Any) -> RunningServer:
        running = start_server(demo_dirs.model, Settings(**settings))
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


async def handshake_status(url: str, **kwargs: Any) -> int:
    try:
        async with websockets.connect(url, **kwargs):
            return 101
    except InvalidStatus as exc:
        return int(exc.response.status_code)


async def close_code(client: GatewayClient, timeout_s: float = 60) -> tuple[list[dict[str, Any]], int | None]:
    """Read until the server closes; return the frames seen and the close code. The timeout is a hang
    guard: the read ends at the close."""
    frames = []
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                frames.append(await client.recv())
    except ConnectionClosed as exc:
        return frames, exc.rcvd.code if exc.rcvd else None
    return frames, None


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def test_connection_limits_refuse_with_503_while_http_stays_up(make_server: Any) -> None:
    """Past the per-client and global limits the handshake gets 503; /healthz still answers 200."""
    running = make_server(max_connections=3, max_connections_per_client=2)
    async with GatewayClient(running.ws_url), GatewayClient(running.ws_url):
        assert await handshake_status(running.ws_url) == 503
        assert await asyncio.to_thread(http_status, running.http_url + "/healthz") == 200
    async with GatewayClient(running.ws_url) as client:
        assert (await client.request({"type": "ping"}))["type"] == "pong"
    metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(running.http_url + "/metrics").read().decode())
    assert 'gateway_connections_rejected_total{reason="per_client"} 1.0' in metrics


async def test_cross_site_origin_is_refused(make_server: Any) -> None:
    """A browser Origin from another site gets 403; the same origin and allow-listed origins pass."""
    running = make_server(allowed_origins="https://chat.example.com")
    assert await handshake_status(running.ws_url, origin="http://evil.example") == 403
    assert await handshake_status(running.ws_url, origin=f"http://127.0.0.1:{running.port}") == 101
    assert await handshake_status(running.ws_url, origin="https://chat.example.com") == 101
    assert await handshake_status(running.ws_url) == 101  # no Origin: not a browser


async def test_api_key_by_header_or_subprotocol(make_server: Any) -> None:
    """With an API key the handshake needs it, as a Bearer header or a `bearer.<key>` subprotocol."""
    running = make_server(api_key="s3cret-key")
    assert await handshake_status(running.ws_url) == 401
    assert await handshake_status(running.ws_url, subprotocols=["gateway.msgpack", "bearer.wrong"]) == 401
    headers = {"Authorization": "Bearer s3cret-key"}
    assert await handshake_status(running.ws_url, additional_headers=headers) == 101
    async with websockets.connect(running.ws_url, subprotocols=["gateway.msgpack", "bearer.s3cret-key"]) as ws:
        assert ws.subprotocol == "gateway.msgpack"  # the key is never echoed
        assert msgpack.unpackb(await ws.recv())["type"] == "ready"


async def test_rate_limit_answers_with_retry_after_then_closes_a_flood(make_server: Any) -> None:
    """Over the frame rate a client gets `rate_limited` with retry_after_ms and stays open; a client
    that keeps flooding is closed with 4002 after a `closing` frame."""
    running = make_server(frames_per_second=5)
    async with GatewayClient(running.ws_url) as client:
        for _ in range(15):
            await client.send({"type": "ping"})
        answers = [await client.recv() for _ in range(15)]
        limited = [a for a in answers if a["type"] == "error"]
        assert limited and all(a["code"] == "rate_limited" and a["retry_after_ms"] > 0 for a in limited)
        await asyncio.sleep(max(a["retry_after_ms"] for a in limited) / 1000 + 0.3)
        assert (await client.turn("ok", "hi", max_tokens=3, **GREEDY)).done
    async with GatewayClient(running.ws_url) as flooder:
        try:
            for _ in range(200):
                await flooder.send({"type": "ping"})
        except ConnectionClosed:
            pass
        frames, code = await close_code(flooder)
    assert code == 4002 and frames[-1] == {"type": "closing", "code": 4002, "reason": "too many frames"}


async def test_turn_rate_limit(make_server: Any) -> None:
    """Turns beyond turns_per_minute get `rate_limited` naming the turn; the connection stays usable."""
    running = make_server(turns_per_minute=1)  # a burst of one turn, then one a minute: the second is early, however slow
    async with GatewayClient(running.ws_url) as client:
        assert (await client.turn("a", "hi", max_tokens=2, **GREEDY)).done
        refused = await client.turn("b", "hi", max_tokens=2, **GREEDY)
        assert [(e["code"], e["id"]) for e in refused.errors] == [("rate_limited", "b")]
        assert refused.errors[0]["retry_after_ms"] > 1000
        assert (await client.request({"type": "ping"}))["type"] == "pong"


def noise_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


async def test_slow_consumer_is_closed_and_its_turn_stopped(make_server: Any) -> None:
    """A client that stops reading is closed with 4000 within the send deadline; its turn stops;
    another client's turn is unaffected."""
    # history frames with images owe it more than loopback buffers take; their budget is tested elsewhere
    running = make_server(send_timeout_s=1.0, history_image_bytes_per_second=1 << 40)
    big = noise_png(1200, 1000)  # about 3.6 MB
    async with GatewayClient(running.ws_url, max_queue=1) as slow:
        first = await slow.turn("img", "look", [big], max_tokens=2, **GREEDY)
        assert first.done
        # ~86 MB of history frames it will never read: more than loopback's socket buffers can take
        # (Linux autotunes a receive buffer up to tcp_rmem's max, 32 MB here), so the server's send blocks
        for _ in range(24):
            await slow.send({"type": "history", "include_images": True})
        await slow.start_turn("long", "go on", max_tokens=1500, ignore_eos=True, **GREEDY)
        async with GatewayClient(running.ws_url) as other:
            result = await other.turn("fine", "hello", max_tokens=5, **GREEDY)
        assert result.done and not result.errors
        await wait_until(lambda: slow.ready["session"] not in running.app.state.ws.connections, timeout_s=30)
        await wait_until(lambda: not running.engine.busy.is_set(), timeout_s=60)
    assert running.engine.tokens_generated < 1500 + 50


async def test_idle_connection_is_closed_with_a_closing_frame(make_server: Any) -> None:
    """No frames and no turn for idle_timeout_s: a `closing` frame, then close code 4001."""
    running = make_server(idle_timeout_s=0.5)
    async with GatewayClient(running.ws_url) as client:
        frames, code = await close_code(client)
    assert code == 4001 and frames == [{"type": "closing", "code": 4001, "reason": "idle timeout"}]


async def test_sigterm_drains_running_turns_then_closes_with_1001(make_server: Any) -> None:
    """On SIGTERM a running turn finishes, new connections and turns are refused, then 1001."""
    running = make_server(drain_timeout_s=20)
    loop = running.server.servers[0].get_loop()
    async with GatewayClient(running.ws_url) as client, GatewayClient(running.ws_url) as idle:
        await client.start_turn("t", "finish me", max_tokens=300, ignore_eos=True, **GREEDY)
        await next_of(client.recv, "token")
        loop.call_soon_threadsafe(running.server.handle_exit, signal.SIGTERM, None)
        await wait_until(lambda: running.app.state.runtime.draining, timeout_s=60)
        assert await handshake_status(running.ws_url) == 503
        refused = await idle.turn("late", "too late", max_tokens=2)
        result = await client.collect("t")
        frames, code = await close_code(client)
    assert [e["code"] for e in refused.errors] == ["shutting_down"]
    assert result.done and result.done["finish_reason"] == "length" and result.done["usage"]["completion_tokens"] == 300
    assert code == 1001 and frames[-1] == {"type": "closing", "code": 1001, "reason": "server shutting down"}


async def test_handler_bug_closes_only_that_connection_with_1011(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug while handling a frame closes that connection with 1011 and no exception text."""
    import gateway.ws.handlers

    def broken(session: object, frame: object) -> object:
        raise RuntimeError("secret internal detail")

    async with GatewayClient(server.ws_url) as bystander, GatewayClient(server.ws_url) as victim:
        monkeypatch.setattr(gateway.ws.handlers, "history_frame", broken)
        await victim.send({"type": "history"})
        frames, code = await close_code(victim)
        monkeypatch.undo()
        result = await bystander.turn("b", "still fine?", max_tokens=3, **GREEDY)
    assert code == 1011 and frames == [{"type": "closing", "code": 1011, "reason": "internal error"}]
    assert "secret" not in json.dumps(frames)
    assert result.done


async def test_generation_failure_gives_error_and_done_then_next_turn_works(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception inside generation ends that turn with `error` generation and a `done`; the next turn works."""
    prompt = server.engine.loaded.prompt
    original = prompt.build

    def broken(messages: object) -> object:
        raise RuntimeError("CUDA says no")

    async with GatewayClient(server.ws_url) as client:
        monkeypatch.setattr(prompt, "build", broken)
        failed = await client.turn("f", "fail", max_tokens=3)
        monkeypatch.setattr(prompt, "build", original)
        ok = await client.turn("g", "work", max_tokens=3, **GREEDY)
        history = await client.request({"type": "history"})
    assert [e["code"] for e in failed.errors] == ["generation"] and "CUDA" not in failed.errors[0]["message"]
    assert failed.done and failed.done["finish_reason"] == "error"
    assert ok.done and ok.done["finish_reason"] in ("length", "stop")
    assert [t["id"] for t in history["turns"]] == ["g", "g"]  # a failed turn leaves no trace


async def test_image_urls_behind_the_ssrf_guard(make_server: Any) -> None:
    """`image_urls` are fetched when the operator allow-lists the address, refused otherwise."""
    web = LoopbackServer(HANDLERS)
    try:
        guarded = make_server()
        allowed = make_server(image_fetch_allow="127.0.0.1/32")
        async with GatewayClient(guarded.ws_url) as client:
            refused = await client.turn("u1", "look", image_urls=[web.url("/png")])
        async with GatewayClient(allowed.ws_url) as client:
            fetched = await client.turn("u2", "look", image_urls=[web.url("/png")], max_tokens=2, **GREEDY)
            history = await client.request({"type": "history"})
        assert [e["code"] for e in refused.errors] == ["forbidden_url"]
        assert fetched.done and history["turns"][0]["images"][0]["format"] == "png"
    finally:
        web.close()


async def test_metrics_endpoint(server: RunningServer) -> None:
    """/metrics exposes connections, turns, tokens, latency histograms and errors by code."""
    async with GatewayClient(server.ws_url) as client:
        await client.turn("m", "count me", max_tokens=4, **GREEDY)
        await client.send({"type": "nope"})
        await client.recv()
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(server.http_url + "/metrics").read().decode())
    for name in (
        "gateway_connections ",
        "gateway_turns_total{finish_reason=",
        "gateway_tokens_generated_total",
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_inter_token_seconds_bucket",
        'gateway_errors_total{code="unknown_type"}',
        "gateway_turns_active",
        "gateway_turns_queued",
    ):
        assert name in text, name
