"""The gateway in front of real vLLM servers (installed and started by the test session): history, exact
counts and trimming, images, cancellation that frees vLLM, and two replicas with affinity and failover."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.app import create_app
from gateway.cli import build_engine
from gateway.client import GatewayClient, TurnResult
from gateway.config import Settings
from gateway.engine.upstream.replicas import rendezvous_score
from gateway.server import DrainingServer, make_server
from tests.conftest import image_bytes
from tests.vllm_support import VllmPair, free_port

pytestmark = pytest.mark.timeout(900)  # the first test also installs vLLM (cached after) and starts two servers

GREEDY = {"temperature": 0, "seed": 1}
RUNNING = "vllm:num_requests_running"
PROMPT_TOTAL = "vllm:prompt_tokens_total"
SUCCESS_TOTAL = "vllm:request_success_total"
GENERATED = "vllm:generation_tokens_total"


@dataclass
class Gateway:
    server: DrainingServer
    thread: threading.Thread
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def start_gateway(settings: Settings) -> Gateway:
    """A real uvicorn serving the gateway, its engine built as `gateway serve` builds it."""
    port = free_port()
    settings = settings.replace(port=port, host="127.0.0.1", log_level="warning")
    app = create_app(settings, engine_factory=build_engine)
    server = make_server(app, settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while getattr(getattr(app.state, "runtime", None), "turns", None) is None:  # the engine is probed after start-up
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.05)
    return Gateway(server, thread, port)


@pytest.fixture(scope="module")
def gateway(vllm_pair: VllmPair) -> Iterator[Gateway]:
    running = start_gateway(Settings(upstreams=vllm_pair.primary.url))
    yield running
    running.stop()


async def test_history_reaches_vllm_with_exact_counts(gateway: Gateway, vllm_pair: VllmPair) -> None:
    """The second turn's prompt holds the first exchange: vLLM counts exactly the tokens `accepted` announced."""
    vllm = vllm_pair.primary
    async with GatewayClient(gateway.ws_url) as client:
        before = vllm.metric(PROMPT_TOTAL)
        first = await client.turn("h1", "the red house", max_tokens=6, **GREEDY)
        middle = vllm.metric(PROMPT_TOTAL)
        second = await client.turn("h2", "and the blue sky", max_tokens=6, **GREEDY)
        after = vllm.metric(PROMPT_TOTAL)
    assert client.ready["model"] == "tiny-vlm" and client.ready["limits"]["context_tokens"] == 8192
    assert first.accepted and second.accepted and first.done and second.done
    assert middle - before == first.accepted["prompt_tokens"] == first.done["usage"]["prompt_tokens"]
    assert after - middle == second.accepted["prompt_tokens"] == second.done["usage"]["prompt_tokens"]
    assert second.accepted["prompt_tokens"] > first.accepted["prompt_tokens"] + first.done["usage"]["completion_tokens"]
    assert first.done["text"] and first.done["usage"]["completion_tokens"] == 6


TOKENS = 4000  # the model writes these in about a second: the window the cancel has to arrive in
TRIES = 8


async def test_cancel_frees_vllm(gateway: Gateway, vllm_pair: VllmPair) -> None:
    """`cancel` closes the upstream stream: vLLM's running-requests gauge goes back to 0 having generated
    far fewer than the 4,000 tokens the turn asked for (it ignores end-of-sequence)."""
    vllm = vllm_pair.primary

    async def metric(name: str) -> float:  # off the event loop: a loaded vLLM can take a while to answer
        return await asyncio.to_thread(vllm.metric, name)

    # This tiny model writes 4,000 tokens in about a second (TRIES is
    # generous: one loaded run lost three tries in a row); on a loaded machine it can finish before the
    # cancel arrives. Such a try proves nothing either way and is made again; a cancel that never stops
    # vLLM fails every try.
    for _ in range(TRIES):
        generated = await metric(GENERATED)
        async with GatewayClient(gateway.ws_url) as client:
            await client.start_turn("c1", "tell me a long story", max_tokens=TOKENS, ignore_eos=True, **GREEDY)
            started_at = time.monotonic()
            finished = False  # vLLM ran all of it between two readings of its gauge
            while await metric(RUNNING) != 1:  # vLLM's stream can lag behind it: watch vLLM itself
                if finished := await metric(GENERATED) - generated >= TOKENS:
                    break
                assert time.monotonic() - started_at < 60.0, "vLLM never ran the request"
                await asyncio.sleep(0.01)
            if finished:
                await client.collect("c1")
                continue
            await client.send({"type": "cancel", "id": "c1"})
            result = await client.collect("c1")
            cancelled_at = time.monotonic()
            while await metric(RUNNING) != 0:
                # The bound is the token count below, not this time (a busy machine may be slow to tell).
                assert time.monotonic() - cancelled_at < 60.0, "vLLM still runs the cancelled request"
                await asyncio.sleep(0.05)
        assert result.done is not None
        if result.done["finish_reason"] == "length" or await metric(GENERATED) - generated >= TOKENS:
            continue  # vLLM finished before the cancel reached it
        assert result.done["finish_reason"] == "cancelled"
        assert result.done["usage"]["completion_tokens"] < TOKENS
        return
    pytest.fail(f"vLLM finished all {TOKENS:,} tokens before the cancel reached it, {TRIES} times")


async def eight_turns(settings: Settings) -> tuple[dict[str, Any], list[TurnResult]]:
    """Eight turns of six words and 16 tokens in one session, through a gateway of its own started with
    `settings`: its `ready` frame and the turns."""
    gateway = start_gateway(settings)
    try:
        async with GatewayClient(gateway.ws_url) as client:
            results = [
                await client.turn(f"t{i}", "one two three four five six", max_tokens=16, ignore_eos=True, **GREEDY)
                for i in range(8)
            ]
    finally:
        gateway.stop()
    return client.ready, results


async def test_trimming_uses_exact_counts(vllm_pair: VllmPair) -> None:
    """With a small window the oldest exchanges are dropped by vLLM's own counts: every prompt fits exactly."""
    _, results = await eight_turns(Settings(upstreams=vllm_pair.primary.url, context_tokens=80))
    dropped = [r.accepted["prompt_tokens"] for r in results if r.accepted and r.accepted["dropped_turns"]]
    assert dropped, "the history never outgrew the window"
    for result in results:
        assert result.accepted and result.done
        assert result.accepted["prompt_tokens"] == result.done["usage"]["prompt_tokens"]
        assert result.accepted["prompt_tokens"] + 16 <= 80


async def test_image_turn_through_vllm(gateway: Gateway, vllm_pair: VllmPair) -> None:
    """`ready.vision` is true (probed at start) and an image turn's prompt counts the image's tokens."""
    async with GatewayClient(gateway.ws_url) as client:
        plain = await client.turn("i0", "what is this", max_tokens=4, **GREEDY)
        await client.request({"type": "reset"})
        pictured = await client.turn("i1", "what is this", [image_bytes("JPEG", (80, 60))], max_tokens=4, **GREEDY)
    assert client.ready["vision"] is True
    assert plain.accepted and pictured.accepted and pictured.done
    assert pictured.done["finish_reason"] in ("stop", "length")
    assert pictured.accepted["prompt_tokens"] == pictured.done["usage"]["prompt_tokens"]
    assert pictured.accepted["prompt_tokens"] > plain.accepted["prompt_tokens"]


async def test_local_tokenizer_counts_exactly(vllm_pair: VllmPair) -> None:
    """`--tokenizer DIR`: `ready` says the local tokenizer counts, its counts are its chat template's and
    equal vLLM's own, and trimming by them keeps every prompt inside a small window."""
    from transformers import AutoTokenizer

    settings = Settings(upstreams=vllm_pair.primary.url, tokenizer=str(vllm_pair.model_dir), context_tokens=80)
    ready, results = await eight_turns(settings)
    assert ready["token_counter"] == "tokenizer"
    assert all(r.accepted and r.done for r in results)
    first, second = results[0], results[1]
    assert first.done and second.accepted and second.done
    conversation = [{"role": "user", "content": "one two three four five six"}]
    tokenizer = AutoTokenizer.from_pretrained(vllm_pair.model_dir)
    templated = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert first.accepted and first.accepted["prompt_tokens"] == len(templated)
    conversation += [{"role": "assistant", "content": first.done["text"]}, conversation[0]]
    templated = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert second.accepted["prompt_tokens"] == len(templated)
    assert any(r.accepted and r.accepted["dropped_turns"] for r in results), "the history never outgrew the window"
    for result in results:
        assert result.accepted and result.done
        assert result.accepted["prompt_tokens"] == result.done["usage"]["prompt_tokens"]
        assert result.accepted["prompt_tokens"] + 16 <= 80


# ---- two replicas: kills one, so it runs last -----------------------------------------------------


async def test_websocket_session_sticks_to_one_replica_then_fails_over(vllm_pair: VllmPair) -> None:
    """One WebSocket session's turns all reach one replica (its rendezvous choice); when that replica dies
    between turns, the next turn succeeds on the other, with the history the gateway kept."""
    servers = [vllm_pair.primary, vllm_pair.secondary]
    gateway = start_gateway(Settings(upstreams=",".join(server.url for server in servers)))
    try:
        async with GatewayClient(gateway.ws_url) as client:
            before = [server.metric(SUCCESS_TOTAL) for server in servers]
            turns = [await client.turn(f"a{i}", f"turn {i}", max_tokens=3, **GREEDY) for i in range(3)]
            after = [server.metric(SUCCESS_TOTAL) for server in servers]
            home = max(servers, key=lambda server: rendezvous_score(client.ready["session"], server.url))
            other = servers[1 - servers.index(home)]
            home.kill()
            moved = await client.turn("a3", "after the crash", max_tokens=3, **GREEDY)
            final = other.metric(SUCCESS_TOTAL)
    finally:
        gateway.stop()
    assert [a - b for a, b in zip(after, before)] == [3 if server is home else 0 for server in servers]
    assert all(t.done and t.done["finish_reason"] == "length" for t in turns)
    assert moved.done and moved.done["finish_reason"] == "length" and not moved.errors
    assert final == after[servers.index(other)] + 1
    assert moved.accepted and turns[-1].accepted
    assert moved.accepted["prompt_tokens"] == moved.done["usage"]["prompt_tokens"] > turns[-1].accepted["prompt_tokens"]
