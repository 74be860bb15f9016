"""One turn streamed from an upstream replica: replica choice, one retry before the first token, deadlines,
cancellation, and the result the sink receives."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.engine.contract import FinishReason, GenerationRequest, GenerationResult, ToolCall, TurnSink
from gateway.engine.upstream import wire
from gateway.engine.upstream.client import ContextOverflow, Overloaded, ReplicaClient, Unavailable, UpstreamError, classify_event
from gateway.engine.upstream.replicas import NoReplica, Replica, ReplicaSet
from gateway.engine.upstream.stream import StreamEvent
from gateway.errors import ErrorCode, GatewayError, RetryLater

log = logging.getLogger("gateway.upstream")


@dataclass(frozen=True)
class Deadlines:
    first_token_s: float = 60.0  # from submission to the first token (queueing and prefill upstream)
    token_gap_s: float = 30.0  # between two chunks


@dataclass
class TurnContext:
    """What a turn needs from its engine."""

    replicas: ReplicaSet
    client_for: Callable[[Replica], ReplicaClient]
    model: str
    deadlines: Deadlines


@dataclass(eq=False)
class UpstreamTurn:
    request: GenerationRequest
    sink: TurnSink
    context: TurnContext
    started: float = field(default_factory=time.perf_counter)
    deadline: float = 0.0  # perf_counter time; the engine's ticker stops the turn past it
    timed_out: str | None = None  # which deadline passed
    task: asyncio.Task[None] | None = None
    _texts: list[str] = field(default_factory=list)
    _chunks: int = 0  # text chunks received: the token count when the upstream reports no usage
    _first_at: float | None = None
    _usage: StreamEvent = field(default_factory=StreamEvent)
    _calls: dict[int, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.deadline = self.started + self.context.deadlines.first_token_s

    def check(self, now: float) -> None:
        """Called by the engine's ticker: stop the task when cancelled or late."""
        if self.task is None or self.task.done():
            return
        if self.request.handle.cancelled.is_set():
            self.task.cancel()
        elif now > self.deadline:
            self.timed_out = "first token" if self._first_at is None else "next token"
            self.task.cancel()

    async def run(self) -> None:
        try:
            reason, failure = await self._attempts()
        except asyncio.CancelledError:
            reason, failure = self._stopped()
        self.sink.on_done(self._result(reason, failure))

    def _stopped(self) -> tuple[FinishReason, GatewayError | None]:
        if self.timed_out is not None:
            return "error", GatewayError(ErrorCode.GENERATION, f"the upstream sent no {self.timed_out} in time")
        return "cancelled", None

    async def _attempts(self) -> tuple[FinishReason, GatewayError | None]:
        """Stream from the session's replica; before the first token, one retry on another."""
        tried: list[Replica] = []
        failure: UpstreamError | None = None
        while True:
            try:
                unable = [*tried, *self.context.replicas.lacking(self.request.adapter)]
                replica = self.context.replicas.pick(self.request.affinity, time.monotonic(), unable)
            except NoReplica as exc:
                if failure is not None:
                    return "error", self._failure(failure)
                return "error", RetryLater(ErrorCode.OVERLOADED, str(exc), _ms(exc.retry_after_s))
            try:
                return await self._stream(replica), None
            except UpstreamError as exc:
                self._note_failure(replica, exc)
                if not exc.retryable or self._first_at is not None or tried:
                    return "error", self._failure(exc)
                tried.append(replica)
                failure = exc

    async def _stream(self, replica: Replica) -> FinishReason:
        model = self.request.adapter or self.context.model  # vLLM serves each LoRA adapter as a model id of its own
        body = wire.chat_body(model, self.request.messages, self.request.params, self.request.tools)
        replica.active += 1
        try:
            upstream_reason: str | None = None
            client = self.context.client_for(replica)
            async for events in client.stream_chat(body, self._read_timeout(), self.request.traceparent):
                upstream_reason = self._take(events) or upstream_reason
            return wire.finish_reason(upstream_reason)
        finally:
            replica.active -= 1

    def _take(self, events: list[StreamEvent]) -> str | None:
        """One network read's chunks: their text in one `on_token` (the front ends merge deltas anyway, and
        one call instead of one per chunk keeps the event loop free); an error chunk raises, after the
        text before it. Returns the finish reason, when one came."""
        now = time.perf_counter()
        self.deadline = now + self.context.deadlines.token_gap_s
        texts: list[str] = []
        reason: str | None = None
        failure: UpstreamError | None = None
        for event in events:
            if event.error is not None:
                failure = classify_event(event)
                break
            if event.prompt_tokens is not None:
                self._usage = event
            wire.merge_tool_call_deltas(self._calls, event.tool_calls)
            reason = event.finish_reason or reason
            if event.text:
                texts.append(event.text)
        if texts:
            self._first_at = self._first_at or now
            self._chunks += len(texts)
            self._texts.append("".join(texts))
            self.sink.on_token(self._texts[-1])
        if failure is not None:
            raise failure
        return reason

    def _read_timeout(self) -> float:
        """The HTTP client's own backstop; the ticker enforces the real deadlines."""
        d = self.context.deadlines
        return max(d.first_token_s, d.token_gap_s) + 5.0

    def _note_failure(self, replica: Replica, exc: UpstreamError) -> None:
        log.warning("upstream %s: %s", replica.url, exc)
        if isinstance(exc, Overloaded):
            self.context.replicas.mark_overloaded(replica, time.monotonic(), exc.retry_after_s)
        elif isinstance(exc, Unavailable) and self._first_at is None:
            self.context.replicas.mark_down(replica)

    def _failure(self, exc: UpstreamError) -> GatewayError:
        """What the client is told: a stable code, and with `overloaded` the upstream's Retry-After."""
        if isinstance(exc, Overloaded):
            message = f"the upstream is overloaded; retry in {exc.retry_after_s:.0f} s"
            return RetryLater(ErrorCode.OVERLOADED, message, _ms(exc.retry_after_s))
        if isinstance(exc, ContextOverflow):
            return GatewayError(ErrorCode.CONTEXT_OVERFLOW, f"the turn does not fit the upstream's context: {str(exc)[:300]}")
        return GatewayError(ErrorCode.GENERATION, "the upstream failed" if self._first_at is not None else str(exc)[:300])

    def _result(self, reason: FinishReason, failure: GatewayError | None) -> GenerationResult:
        end = time.perf_counter()
        completion = self._usage.completion_tokens
        # Token ids are never asked for (vLLM's return_token_ids costs it work on every chunk): the usage's
        # count, else one per text chunk; the ids themselves unknown (0).
        ids = (0,) * (completion if completion is not None else self._chunks)
        decode_s = end - self._first_at if self._first_at is not None else 0.0
        calls = tuple(ToolCall(c["id"], c["name"], c["arguments"]) for _, c in sorted(self._calls.items()))
        if calls and reason == "stop":
            reason = "tool_calls"
        constrained = self.request.params.grammar is not None
        return GenerationResult(
            finish_reason=reason,
            text="".join(self._texts),
            token_ids=ids,
            prompt_tokens=self._usage.prompt_tokens or 0,
            ttft_ms=(self._first_at - self.started) * 1000 if self._first_at is not None else None,
            total_ms=(end - self.started) * 1000,
            tokens_per_s=(len(ids) - 1) / decode_s if decode_s > 0 and len(ids) > 1 else 0.0,
            error=failure.message if failure is not None else None,
            structured=reason in ("stop", "tool_calls") if constrained else None,  # the upstream enforced it
            tool_calls=calls,
            error_code=failure.code if failure is not None else None,
            retry_after_ms=failure.retry_after_ms if isinstance(failure, RetryLater) else None,
        )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
