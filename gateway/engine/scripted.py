"""A scripted engine with no model: instant, deterministic replies, for protocol tests and benchmarks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from gateway.engine import contract


class ScriptedEngine:
    """Replies `w0 w1 w2 ...`, one token per word, up to max_tokens, as fast as the event loop allows.
    Tokens come from a task on the caller's loop, one per loop iteration, so a benchmark measures the
    WebSocket layer's own cost per frame, not a model's and not a thread hand-off's."""

    def __init__(self, model_id: str = "scripted", context_tokens: int = 1 << 20, queue_size: int = 64) -> None:
        self.model_id = model_id
        self.vision = True
        self.reads_video = False  # a clip reaches a script as its frames
        self.warms_up = False
        self.token_counter = "estimate"
        self.context_tokens = context_tokens
        self.adapters: tuple[str, ...] = ()
        self.chat_template: str | None = None
        self.queue_size = queue_size
        self._running: set[asyncio.Task[None]] = set()

    async def count_prompt_tokens(self, messages: Sequence[contract.ChatMessage], tools: Sequence[dict[str, Any]] = ()) -> int:
        return self.count(messages)

    def count(self, messages: Sequence[contract.ChatMessage]) -> int:
        return sum(len(m.text.split()) + 16 * len(m.images) + 2 for m in messages)

    async def prepare(self, images: Sequence[contract.ChatImage]) -> None:
        pass

    def limit_image_cache(self, max_bytes: int) -> None:
        pass  # no processed images are held here

    def load(self) -> contract.EngineLoad:
        return contract.EngineLoad(active=len(self._running), waiting=0, capacity=self.queue_size)

    def health(self) -> contract.EngineHealth:
        return contract.EngineHealth(ok=True)

    def submit(self, request: contract.GenerationRequest, sink: contract.TurnSink) -> contract.TurnHandle:
        if len(self._running) >= self.queue_size:
            raise contract.EngineFull()
        request.handle.admitted.set()  # it starts at once: nothing waits here
        task = asyncio.get_running_loop().create_task(self._generate(request, sink))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return request.handle

    def start(self) -> None:
        pass

    def stop(self, timeout_s: float = 10.0) -> None:
        for task in list(self._running):
            task.cancel()

    async def _generate(self, request: contract.GenerationRequest, sink: contract.TurnSink) -> None:
        started = time.perf_counter()
        emitted: list[str] = []
        reason = "length"
        for i in range(request.params.max_tokens):
            await asyncio.sleep(0)  # one token per loop iteration, like a real stream
            if request.handle.cancelled.is_set():
                reason = "cancelled"
                break
            emitted.append(f" w{i}")
            sink.on_token(emitted[-1])
        total_ms = (time.perf_counter() - started) * 1000
        sink.on_done(
            contract.GenerationResult(
                finish_reason=reason,  # type: ignore[arg-type]
                text="".join(emitted),
                token_ids=tuple(range(len(emitted))),
                prompt_tokens=self.count(request.messages),
                ttft_ms=0.0 if emitted else None,
                total_ms=total_ms,
                tokens_per_s=len(emitted) / (total_ms / 1000) if total_ms > 0 else 0.0,
            )
        )
