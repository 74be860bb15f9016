"""The bench's direct load: the same sessions, prompts and lengths straight to an OpenAI-compatible server
(the gateway's upstream), so a run can say what the gateway in front of it costs."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx


@dataclass
class StreamTimes:
    sent_at: float
    token_times: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    error: str | None = None


async def _stream_turn(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> StreamTimes:
    times = StreamTimes(sent_at=time.perf_counter())
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            times.error = f"HTTP {response.status_code}"
            return times
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                times.completion_tokens = chunk["usage"]["completion_tokens"]
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                times.token_times.append(time.perf_counter())
    return times


def model_of(url: str) -> str:
    with httpx.Client(timeout=10) as http:
        return str(http.get(f"{url}/v1/models").raise_for_status().json()["data"][0]["id"])


async def run_direct(url: str, sessions: int, turns: int, prompt: str, max_tokens: int) -> tuple[list[StreamTimes], float]:
    """`sessions` concurrent streams of `turns` sequential turns each; (every turn's times, wall seconds)."""
    body = {
        "model": model_of(url),
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    results: list[StreamTimes] = []
    limits = httpx.Limits(max_connections=sessions * 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits) as http:

        async def session() -> None:
            for _ in range(turns):
                results.append(await _stream_turn(http, url, body))

        started = time.perf_counter()
        await asyncio.gather(*(session() for _ in range(sessions)))
        return results, time.perf_counter() - started
