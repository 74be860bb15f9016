"""`gateway bench`: N WebSocket sessions against a gateway, with raw `generate` baselines from the same run."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import sys
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from websockets.exceptions import WebSocketException

from gateway.bench.openai import BENCH_SAMPLING, per_token_ms
from gateway.client import GatewayClient, TurnResult

T = TypeVar("T")
log = logging.getLogger("gateway.bench.run")
QUIET_LOADING = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # model-loading bars would cut through the bench's own


class BenchError(Exception):
    """The gateway could not be started or reached; the message says why, in one line."""


PROMPT_WORDS = "the red house on the left shows a small cat and a large dog under one blue sky".split()


@dataclass
class LoadReport:
    sessions: int
    turns: int
    completion_tokens: int
    wall_s: float
    errors: int
    ttft_ms: dict[str, float]
    itl_ms: dict[str, float]  # between two token frames (a frame can carry several tokens)
    tpot_ms: dict[str, float]  # per token, each turn's decode time over its tokens (see per_token_ms)
    session_tokens_per_s: dict[str, float]
    token_frames: int

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0

    @property
    def frames_per_s(self) -> float:
        return self.token_frames / self.wall_s if self.wall_s else 0.0


@dataclass
class BenchConfig:
    url: str
    sessions: int = 16
    turns: int = 2
    max_tokens: int = 64
    prompt_words: int = 48
    images: int = 0
    progress: bool = True
    turn_timeout_s: float = 300.0  # a turn with no `done` by then counts as an error and ends its session
    extra: dict[str, Any] = field(default_factory=dict)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99)}


def prompt_text(words: int) -> str:
    return " ".join(PROMPT_WORDS[i % len(PROMPT_WORDS)] for i in range(words))


def bench_image() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (112, 112), (180, 40, 40)).save(buffer, "PNG")
    return buffer.getvalue()


class StartLine:
    """Connected sessions wait here, so that every first turn starts together, as the direct load's do:
    staggered starts would make the upstream run more, smaller batches, and the gateway would be blamed
    for the WebSocket handshakes. The wall clock starts when the line opens."""

    def __init__(self, sessions: int) -> None:
        self.waiting = sessions
        self.opened = asyncio.Event()
        self.opened_at = time.perf_counter()

    async def reach(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.opened_at = time.perf_counter()
            self.opened.set()
        await self.opened.wait()


async def _session(config: BenchConfig, index: int, results: list[TurnResult], tick: Any, line: StartLine) -> None:
    images = [bench_image()] * config.images
    async with GatewayClient(config.url) as client:
        await line.reach()
        for turn in range(config.turns):
            result = TurnResult(id=f"s{index}-t{turn}", sent_at=time.perf_counter())
            await client.start_turn(
                result.id, prompt_text(config.prompt_words), images, max_tokens=config.max_tokens, **BENCH_SAMPLING
            )
            results.append(result)
            try:
                await asyncio.wait_for(client.collect(result.id, result), config.turn_timeout_s)
            except asyncio.TimeoutError:  # counted as an error; the connection's state is unknown, so it ends here
                log.warning("bench turn %s: no done in %.0f s (%s)", result.id, config.turn_timeout_s, _progress_of(result))
                return
            tick()
            # Every turn sees the same prompt length. Not awaited: the server takes a connection's frames in
            # order, so the next turn finds the history empty without the bench waiting a round trip for it.
            await client.send({"type": "reset"})


def _progress_of(result: TurnResult) -> str:
    accepted = "accepted" if result.accepted is not None else "not accepted"
    return f"{accepted}, {len(result.deltas)} token frames, errors {[e.get('code') for e in result.errors]}"


async def run_load(config: BenchConfig) -> LoadReport:
    """Run `sessions` concurrent sessions of `turns` turns each; measure latencies and throughput."""
    results: list[TurnResult] = []
    bar = _progress(
        config.sessions * config.turns, config.progress, f"{config.sessions} session{'s' if config.sessions > 1 else ''}"
    )
    line = StartLine(config.sessions)
    try:
        await asyncio.gather(*(_session(config, i, results, bar.update, line) for i in range(config.sessions)))
    finally:
        bar.close()  # before any error is printed, so the two do not share a line
    wall = time.perf_counter() - line.opened_at
    done = [r for r in results if r.done is not None]
    ttft = [(r.token_times[0] - r.sent_at) * 1000 for r in done if r.token_times]
    itl = [(b - a) * 1000 for r in done for a, b in zip(r.token_times, r.token_times[1:])]
    tpot = [t for r in done if r.done and (t := per_token_ms(r.token_times, r.done["usage"]["completion_tokens"])) is not None]
    per_session = [
        r.done["usage"]["completion_tokens"] / (r.token_times[-1] - r.sent_at)
        for r in done
        if r.done and r.token_times and r.token_times[-1] > r.sent_at
    ]
    return LoadReport(
        sessions=config.sessions,
        turns=len(results),
        completion_tokens=sum(r.done["usage"]["completion_tokens"] for r in done if r.done),
        wall_s=round(wall, 4),
        errors=sum(1 for r in results if r.errors or r.done is None),  # turns, each counted once
        ttft_ms=percentiles(ttft),
        itl_ms=percentiles(itl),
        tpot_ms=percentiles(tpot),
        session_tokens_per_s=percentiles(per_session),
        token_frames=sum(len(r.token_times) for r in done),
    )


async def late_joiner(config: BenchConfig) -> dict[str, float]:
    """TTFT of one turn sent while `sessions - 1` others are mid-stream, and the longest pause in the others'
    tokens from its sending to its first token (the join's cost to them: one prefill chunk at most when the
    engine chunks joiners' prompts, the whole prompt's prefill when it does not)."""
    background = BenchConfig(**{**asdict(config), "sessions": 1, "turns": 1, "max_tokens": config.max_tokens * 4})
    clients = [GatewayClient(config.url) for _ in range(config.sessions - 1)]
    async with contextlib.AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)
        for i, client in enumerate(clients):
            await client.start_turn(
                f"bg{i}", prompt_text(config.prompt_words), temperature=0, max_tokens=background.max_tokens, ignore_eos=True
            )
        for client in clients:  # wait until every background turn is streaming
            while (await client.recv())["type"] != "token":
                pass
        times: list[list[float]] = [[] for _ in clients]
        readers = [asyncio.create_task(_token_times(client, stamps)) for client, stamps in zip(clients, times)]
        async with GatewayClient(config.url) as joiner:
            # A new conversation, prefilled cold: the load's finished turns left the bench prompt's KV held.
            cold = "later " + prompt_text(config.prompt_words - 1)
            result = await joiner.turn("late", cold, temperature=0, max_tokens=8, ignore_eos=True)
        for reader in readers:
            reader.cancel()
        for i, client in enumerate(clients):
            await client.send({"type": "cancel", "id": f"bg{i}"})
    first = result.token_times[0] if result.token_times else float("nan")
    pauses = [b - a for stamps in times for a, b in itertools.pairwise(stamps) if a < first and b > result.sent_at]
    ttft = (first - result.sent_at) * 1000
    return {"ttft_ms": round(ttft, 3), "others_longest_pause_ms": round(max(pauses, default=0.0) * 1000, 3)}


async def _token_times(client: GatewayClient, stamps: list[float]) -> None:
    """When each of a client's token frames arrives, until cancelled."""
    while True:
        if (await client.recv())["type"] == "token":
            stamps.append(time.perf_counter())


def _progress(total: int, enabled: bool, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=label, disable=not enabled, file=sys.stderr, leave=False)


def _run(work: Coroutine[Any, Any, T], url: str) -> T:
    """Run one phase; a gateway that cannot be reached (or refuses) is a BenchError, not a traceback."""
    try:
        return asyncio.run(work)
    except (OSError, WebSocketException) as exc:
        raise BenchError(f"cannot talk to the gateway at {url}: {str(exc) or type(exc).__name__}") from None
