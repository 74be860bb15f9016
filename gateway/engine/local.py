"""The local engine: one generation thread owns the model; turns arrive through a bounded queue."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from gateway.engine.detok import TextStream
from gateway.engine.loader import LoadedModel
from gateway.engine.sampling import choose_token, make_generator
from gateway.engine.types import (
    ChatMessage,
    EngineFull,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    TurnHandle,
    TurnSink,
)
from gateway.errors import GatewayError

log = logging.getLogger("gateway.engine")


@dataclass
class _Job:
    request: GenerationRequest
    sink: TurnSink
    loop: asyncio.AbstractEventLoop
    submitted: float = field(default_factory=time.perf_counter)

    def emit(self, callback: Callable[..., None], *args: Any) -> None:
        """Hand an event to the event loop thread; a closed loop means nobody is listening."""
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            self.request.handle.cancel()


@dataclass
class _Progress:
    """One turn's decoding state, kept apart from the loop so a batching scheduler can hold many."""

    job: _Job
    stream: TextStream
    token_ids: list[int] = field(default_factory=list)
    first_token_at: float | None = None
    last_token_at: float | None = None


def _cache_of(output: Any) -> Any:
    # transformers 5 renamed the output field from past_key_values to cache
    return output["cache"] if "cache" in output else output["past_key_values"]


class LocalEngine:
    """Runs turns one after another on its own thread; `submit` is called from the event loop."""

    def __init__(self, loaded: LoadedModel, queue_size: int = 64, context_tokens: int | None = None) -> None:
        self.loaded = loaded
        self.model_id = loaded.model_id
        self.vision = loaded.prompt.vision
        self.context_tokens = min(loaded.context_tokens, context_tokens or loaded.context_tokens)
        self.tokens_generated = 0  # written only by the generation thread
        self.adapters: tuple[str, ...] = ()
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="gateway-generation", daemon=True)
        self.busy = threading.Event()  # set while a turn is on the model (tests and metrics read it)

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return self.loaded.prompt.count(messages)

    def submit(self, request: GenerationRequest, sink: TurnSink) -> TurnHandle:
        job = _Job(request=request, sink=sink, loop=asyncio.get_running_loop())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise EngineFull() from None
        return request.handle

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the turn in hand (callers cancel first if they are in a hurry) and end the thread."""
        if not self._thread.is_alive():
            return
        while True:  # queued turns will never run; drop them so the sentinel fits
            try:
                dropped = self._queue.get_nowait()
            except queue.Empty:
                break
            if dropped is not None:
                dropped.request.handle.cancel()
                self._finish(_Progress(dropped, TextStream(self.loaded.tokenizer)), "cancelled", 0)
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            progress = _Progress(job, TextStream(self.loaded.tokenizer, job.request.params.stop))
            self.busy.set()
            try:
                self._generate(progress)
            except GatewayError as exc:
                self._finish(progress, "error", 0, error=exc.message)
            except Exception:  # a bug or a model failure ends this turn, never the thread
                log.exception("generation failed")
                self._finish(progress, "error", 0, error="generation failed")
            finally:
                self.busy.clear()

    @torch.inference_mode()
    def _generate(self, progress: _Progress) -> None:
        job = progress.job
        params, handle = job.request.params, job.request.handle
        if handle.cancelled.is_set():
            self._finish(progress, "cancelled", 0)
            return
        job.emit(job.sink.on_start)
        inputs = self.loaded.prompt.build(job.request.messages)
        device = self.loaded.device
        extras = {k: v.to(device) for k, v in inputs.extras.items()}
        if "pixel_values" in extras:
            extras["pixel_values"] = extras["pixel_values"].to(self.loaded.dtype)
        input_ids = inputs.input_ids.to(device)
        generator = make_generator(params, device)
        seen = input_ids[0]
        out = self.loaded.model(input_ids=input_ids, use_cache=True, **extras)
        cache = _cache_of(out)
        reason: FinishReason = "length"
        while len(progress.token_ids) < params.max_tokens:
            if handle.cancelled.is_set():
                reason = "cancelled"
                break
            token = choose_token(out.logits[0, -1], params, seen, generator)
            if self._accept_token(progress, token):
                reason = "stop"
                break
            if len(progress.token_ids) >= params.max_tokens:
                break
            step = torch.tensor([[token]], device=device)
            if params.repetition_penalty != 1.0:
                seen = torch.cat([seen, step[0]])
            out = self.loaded.model(input_ids=step, cache=cache, use_cache=True)
            cache = _cache_of(out)
        self._finish(progress, reason, inputs.prompt_tokens)

    def _accept_token(self, progress: _Progress, token: int) -> bool:
        """Record one sampled token and stream its text; True when the turn should stop here."""
        now = time.perf_counter()
        self.tokens_generated += 1
        progress.token_ids.append(token)
        progress.first_token_at = progress.first_token_at or now
        progress.last_token_at = now
        if token in self.loaded.eos_token_ids:
            return True
        delta = progress.stream.push(token)
        if delta:
            progress.job.emit(progress.job.sink.on_token, delta)
        return progress.stream.stopped

    def _finish(
        self, progress: _Progress, reason: FinishReason, prompt_tokens: int, error: str | None = None
    ) -> None:
        job = progress.job
        tail = progress.stream.finish()
        if tail and reason != "error":
            job.emit(job.sink.on_token, tail)
        now = time.perf_counter()
        first, last = progress.first_token_at, progress.last_token_at
        decode_s = (last - first) if first is not None and last is not None else 0.0
        n = len(progress.token_ids)
        result = GenerationResult(
            finish_reason=reason,
            text=progress.stream.text,
            token_ids=tuple(progress.token_ids),
            prompt_tokens=prompt_tokens,
            ttft_ms=(first - job.submitted) * 1000 if first is not None else None,
            total_ms=(now - job.submitted) * 1000,
            tokens_per_s=(n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0,
            error=error,
        )
        job.emit(job.sink.on_done, result)
