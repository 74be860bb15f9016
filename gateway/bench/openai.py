"""The bench's direct load: the same sessions, prompts, lengths and sampling straight to an OpenAI-compatible
server (the gateway's upstream), so a run can say what the gateway in front of it costs."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx

from gateway.engine.contract import ChatMessage, SamplingParams
from gateway.engine.upstream import stream, wire

# What the bench's WebSocket turns ask for, so both sides send the upstream the same request.
BENCH_SAMPLING: dict[str, Any] = {"temperature": 0.0, "top_p": 1.0, "ignore_eos": True}


@dataclass
class StreamTimes:
    sent_at: float
    token_times: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    error: str | None = None


def per_token_ms(token_times: list[float], tokens: int) -> float | None:
    """A turn's decode time per token: (last arrival - first arrival) / (tokens - 1). Counted the same way
    on both sides however tokens are grouped (the gateway merges the deltas a client has not taken yet
    into one frame; a server may send several tokens in one chunk), so the two can be compared."""
    if tokens < 2 or not token_times:
        return None
    return (token_times[-1] - token_times[0]) * 1000 / (tokens - 1)


async def _stream_turn(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> StreamTimes:
    times = StreamTimes(sent_at=time.perf_counter())
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            times.error = f"HTTP {response.status_code}"
            return times
        decoder = stream.SseDecoder()
        async for data in response.aiter_bytes():
            events = decoder.feed(data)
            for event in events:
                times.completion_tokens = event.completion_tokens or times.completion_tokens
            if any(event.text for event in events):
                times.token_times.append(time.perf_counter())
    return times


def model_of(url: str) -> str:
    with httpx.Client(timeout=10) as http:
        return str(http.get(f"{url}/v1/models").raise_for_status().json()["data"][0]["id"])


def direct_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """The body the gateway's upstream engine would send for the bench's turn."""
    params = SamplingParams(max_tokens=max_tokens, **BENCH_SAMPLING)
    return wire.chat_body(model, [ChatMessage("user", prompt)], params)


async def run_direct(url: str, sessions: int, turns: int, prompt: str, max_tokens: int) -> tuple[list[StreamTimes], float]:
    """`sessions` concurrent streams of `turns` sequential turns each; (every turn's times, wall seconds)."""
    body = direct_body(model_of(url), prompt, max_tokens)
    results: list[StreamTimes] = []
    limits = httpx.Limits(max_connections=sessions * 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits) as http:

        async def session() -> None:
            for _ in range(turns):
                results.append(await _stream_turn(http, url, body))

        started = time.perf_counter()
        await asyncio.gather(*(session() for _ in range(sessions)))
        return results, time.perf_counter() - started
