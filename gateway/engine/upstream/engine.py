"""The upstream engine: the Engine contract over one or more OpenAI-compatible servers (vLLM first)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx

from gateway.engine.adapters import AdapterRegistry
from gateway.engine.contract import (
    ChatImage,
    ChatMessage,
    EngineFull,
    EngineHealth,
    EngineLoad,
    GenerationRequest,
    TurnHandle,
    TurnSink,
)
from gateway.engine.upstream.adapters import UpstreamAdapters
from gateway.engine.upstream.client import Overloaded, ReplicaClient, UpstreamError, timeouts
from gateway.engine.upstream.counting import TokenCounter, UpstreamCounter
from gateway.engine.upstream.discovery import UpstreamInfo
from gateway.engine.upstream.replicas import NoReplica, Replica, ReplicaSet
from gateway.engine.upstream.turn import Deadlines, TurnContext, UpstreamTurn
from gateway.errors import ErrorCode, GatewayError, RetryLater

log = logging.getLogger("gateway.upstream")

TICK_S = 0.05  # how often running turns are checked for cancellation and deadlines
# Idle connections are dropped before uvicorn's (vLLM's server) 5 s keep-alive timeout: at equal
# timeouts a request can go out on a connection the server is closing, and fail as if it were down.
KEEPALIVE_S = 2.0


@dataclass(frozen=True)
class UpstreamOptions:
    connect_timeout_s: float = 2.0
    deadlines: Deadlines = field(default_factory=Deadlines)
    health_interval_s: float = 2.0
    max_in_flight: int = 256  # turns streaming at once, all replicas together
    max_adapters: int = 8  # adapters served at once, the upstream's own included
    api_key: str | None = None


class UpstreamEngine:
    """Turns run as tasks on the caller's event loop, one streamed request each; no thread per request.
    One ticker task checks every running turn for cancellation and deadlines; one task checks health."""

    @property
    def token_counter(self) -> str:
        return self.counter.name

    def __init__(self, info: UpstreamInfo, replicas: ReplicaSet, options: UpstreamOptions, counter: TokenCounter | None = None):
        self.info = info
        self.model_id = info.model
        self.vision = info.vision
        self.reads_video = info.video  # clips go as vLLM's `video_url` parts of sampled frames
        self.warms_up = False  # a warm-up would cost the upstream a request; its own prefix cache serves turns
        self.context_tokens = info.context_tokens
        self.chat_template: str | None = None  # the upstream renders tools and parses calls itself
        self.replicas = replicas
        self.options = options
        self._http: httpx.AsyncClient | None = None
        self._clients: dict[str, ReplicaClient] = {}
        self.counter = counter or UpstreamCounter(info.model, self._pick_for_count, self.client_for)
        self._turns: set[UpstreamTurn] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.context = TurnContext(replicas, self.client_for, info.model, options.deadlines)
        registry = AdapterRegistry(options.max_adapters, info.adapters)
        self._adapters = UpstreamAdapters(registry, lambda: self.replicas.replicas, self.client_for, lambda: self._turns)

    @property
    def adapters(self) -> tuple[str, ...]:
        return self._adapters.registry.served

    # ---- the contract ------------------------------------------------------------------------------

    async def count_prompt_tokens(
        self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] = (), affinity: str | None = None
    ) -> int:
        """(Tool definitions are not counted: the upstream's /tokenize takes messages only.)"""
        self._ensure_tasks()
        try:
            return await self.counter.count(messages, affinity)
        except NoReplica as exc:
            raise RetryLater(ErrorCode.OVERLOADED, str(exc), int(exc.retry_after_s * 1000)) from None
        except Overloaded as exc:
            message = f"the upstream is overloaded; retry in {exc.retry_after_s:.0f} s"
            raise RetryLater(ErrorCode.OVERLOADED, message, max(1, round(exc.retry_after_s * 1000))) from None
        except UpstreamError as exc:
            raise GatewayError(ErrorCode.GENERATION, f"the upstream could not count the prompt: {str(exc)[:200]}") from None

    async def prepare(self, images: Sequence[ChatImage]) -> None:
        pass  # the upstream processes images itself

    def submit(self, request: GenerationRequest, sink: TurnSink) -> TurnHandle:
        self._ensure_tasks()
        self._adapters.registry.check_servable(request.adapter)
        if sum(1 for turn in self._turns if not turn.request.handle.cancelled.is_set()) >= self.options.max_in_flight:
            raise EngineFull()
        try:  # refuse now, with the upstream's Retry-After, when no replica could take it
            self.replicas.pick(request.affinity, time.monotonic())
        except NoReplica as exc:
            raise RetryLater(ErrorCode.OVERLOADED, str(exc), int(exc.retry_after_s * 1000)) from None
        request.handle.admitted.set()  # counted among the active turns from now on, never as waiting
        turn = UpstreamTurn(request, sink, self.context)
        turn.task = asyncio.get_running_loop().create_task(turn.run())
        self._turns.add(turn)
        turn.task.add_done_callback(lambda _: self._turns.discard(turn))
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        return request.handle

    def unloading(self, name: str) -> bool:
        return self._adapters.registry.leaving(name)

    async def load_adapter(self, name: str, path: str) -> None:
        self._ensure_tasks()
        await self._adapters.load(name, path)

    async def unload_adapter(self, name: str) -> None:
        await self._adapters.unload(name)

    def limit_image_cache(self, max_bytes: int) -> None:
        pass  # no processed images are held here

    def load(self) -> EngineLoad:
        return EngineLoad(active=len(self._turns), waiting=0, capacity=self.options.max_in_flight)

    def health(self) -> EngineHealth:
        if self.replicas.up:
            return EngineHealth(ok=True)
        return EngineHealth(ok=False, detail="no upstream replica is reachable")

    def start(self) -> None:
        pass  # tasks start with the first request, on the loop that serves it

    def stop(self, timeout_s: float = 10.0) -> None:
        """From any thread: cancel running turns (each ends with `cancelled`) and close the connections."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.counter.close()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(self._shutdown())
        elif loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout_s)
        self.counter.close()

    # ---- replicas ------------------------------------------------------------------------------------

    def client_for(self, replica: Replica) -> ReplicaClient:
        client = self._clients.get(replica.url)
        if client is None:
            client = self._clients[replica.url] = ReplicaClient(self._client(), replica.url, self.options.api_key)
        return client

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=KEEPALIVE_S)
            self._http = httpx.AsyncClient(timeout=timeouts(self.options.connect_timeout_s, 60.0), limits=limits)
        return self._http

    def _pick_for_count(self, affinity: str | None, tried: Sequence[Replica]) -> Replica:
        return self.replicas.pick(affinity, time.monotonic(), tried)

    def _ensure_tasks(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._health is None:
            self._health = self._loop.create_task(self._check_health())

    async def _tick(self) -> None:
        while self._turns:
            await asyncio.sleep(TICK_S)
            now = time.perf_counter()
            for turn in list(self._turns):
                turn.check(now)

    async def _check_health(self) -> None:
        while True:
            await asyncio.sleep(self.options.health_interval_s)
            checks = [self.client_for(r).healthy(self.options.connect_timeout_s) for r in self.replicas.replicas]
            for replica, ok in zip(self.replicas.replicas, await asyncio.gather(*checks)):
                if ok is None:
                    continue  # slow, not gone: its state stands
                if ok:  # before it takes turns again: a replica that restarted has lost the run-time adapters
                    await self._adapters.restore(replica)
                if ok != (replica in self.replicas.up):
                    log.warning("upstream %s is %s", replica.url, "back" if ok else "down")
                (self.replicas.mark_up if ok else self.replicas.mark_down)(replica)

    async def _shutdown(self) -> None:
        tasks = [t.task for t in self._turns if t.task is not None]
        for task in [*tasks, self._ticker, self._health]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
