"""One turn streamed from an upstream replica: replica choice, one retry before the first token, deadlines,
cancellation, and the result the sink receives."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.engine.types import FinishReason, GenerationRequest, GenerationResult, ToolCall, TurnSink
from gateway.engine.upstream import wire
from gateway.engine.upstream.client import Overloaded, ReplicaClient, Unavailable, UpstreamError
from gateway.engine.upstream.replicas import NoReplica, Replica, ReplicaSet

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
    send_token_ids: bool  # vLLM's `return_token_ids` extension


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
    _token_ids: list[int] = field(default_factory=list)
    _first_at: float | None = None
    _usage: wire.StreamEvent = field(default_factory=wire.StreamEvent)
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
            reason, error = await self._attempts()
        except asyncio.CancelledError:
            reason, error = self._stopped_reason()
        self.sink.on_done(self._result(reason, error))

    def _stopped_reason(self) -> tuple[FinishReason, str | None]:
        if self.timed_out is not None:
            return "error", f"the upstream sent no {self.timed_out} in time"
        return "cancelled", None

    async def _attempts(self) -> tuple[FinishReason, str | None]:
        """Stream from the session's replica; before the first token, one retry on another."""
        tried: list[Replica] = []
        failure: UpstreamError | None = None
        while True:
            try:
                replica = self.context.replicas.pick(self.request.affinity, time.monotonic(), tried)
            except NoReplica as exc:
                return "error", self._describe(failure) if failure is not None else str(exc)
            try:
                return await self._stream(replica)
            except UpstreamError as exc:
                self._note_failure(replica, exc)
                if not exc.retryable or self._first_at is not None or tried:
                    return "error", self._describe(exc)
                tried.append(replica)
                failure = exc

    async def _stream(self, replica: Replica) -> tuple[FinishReason, str | None]:
        body = wire.chat_body(self.context.model, self.request.messages, self.request.params, self.request.tools)
        if self.context.send_token_ids:
            body["return_token_ids"] = True
        replica.active += 1
        try:
            upstream_reason: str | None = None
            async for event in self.context.client_for(replica).stream_chat(body, self._read_timeout()):
                if event.error is not None:
                    raise Unavailable(event.error)
                self._take(event)
                upstream_reason = event.finish_reason or upstream_reason
            return wire.finish_reason(upstream_reason), None
        finally:
            replica.active -= 1

    def _take(self, event: wire.StreamEvent) -> None:
        now = time.perf_counter()
        self.deadline = now + self.context.deadlines.token_gap_s
        if event.prompt_tokens is not None:
            self._usage = event
        self._token_ids.extend(event.token_ids)
        wire.merge_tool_call_deltas(self._calls, event.tool_calls)
        if event.text:
            if self._first_at is None:
                self._first_at = now
            self._texts.append(event.text)
            self.sink.on_token(event.text)

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

    def _describe(self, exc: UpstreamError) -> str:
        if isinstance(exc, Overloaded):
            return f"the upstream is overloaded; retry in {exc.retry_after_s:.0f} s"
        return "the upstream failed" if self._first_at is not None else str(exc)[:300]

    def _result(self, reason: FinishReason, error: str | None) -> GenerationResult:
        end = time.perf_counter()
        completion = self._usage.completion_tokens
        ids = tuple(self._token_ids)
        if not ids or (completion is not None and completion != len(ids)):
            # Servers without token ids: the usage count, else one per chunk; the ids themselves unknown (0).
            ids = (0,) * (completion if completion is not None else len(self._texts))
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
            error=error,
            structured=reason in ("stop", "tool_calls") if constrained else None,  # the upstream enforced it
            tool_calls=calls,
        )
