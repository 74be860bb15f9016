"""One turn's engine events as an OpenAI reply, JSON or server-sent events; a client that leaves stops its turn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Union

from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.core.events import Delta, Ended, ToolCalled, TurnEvent
from gateway.engine.contract import GenerationResult, ToolCall, TurnHandle
from gateway.errors import ErrorCode, GatewayError, RetryLater
from gateway.openai import schema

ReplyEvent = Union[Delta, ToolCalled, Ended]  # merged deltas, the calls (if any), then the end once


class ReplyEvents:
    """Listens to one HTTP turn (on the event loop thread). Text waiting for a slow client merges into one
    delta, and calls into one event, so what is buffered is bounded by the turn's own reply."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._calls: list[ToolCall] = []
        self._end: Ended | None = None
        self._gone = False
        self._wake = asyncio.Event()

    def __call__(self, event: TurnEvent) -> None:
        if isinstance(event, Delta):
            self._text.append(event.text)
        elif isinstance(event, ToolCalled):
            self._calls.extend(event.calls)
        elif isinstance(event, Ended):
            self._end = event
        else:
            return  # OpenAI's stream has no place for a queue position or the prompt's length
        self._wake.set()

    def client_gone(self) -> None:
        self._gone = True
        self._wake.set()

    async def next(self) -> ReplyEvent | None:
        """The text since the last call, else the calls, else the end; None once the client has gone."""
        while True:
            if self._gone:
                return None
            if self._text:
                text = "".join(self._text)
                self._text.clear()
                return Delta(text)
            if self._calls:
                calls = tuple(self._calls)
                self._calls.clear()
                return ToolCalled(calls)
            if self._end is not None:
                return self._end
            self._wake.clear()
            await self._wake.wait()


async def turn_events(events: ReplyEvents, handle: TurnHandle, receive: Receive) -> AsyncGenerator[ReplyEvent, None]:
    """The turn's deltas then its result. However this generator ends (finished, client gone, closed
    early), the turn is cancelled on the way out; for a finished turn that changes nothing."""
    watcher = asyncio.create_task(_wait_for_disconnect(receive, events))
    try:
        while (event := await events.next()) is not None:
            yield event
            if isinstance(event, Ended):
                return
    finally:
        watcher.cancel()
        handle.cancel()


async def _wait_for_disconnect(receive: Receive, events: ReplyEvents) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    events.client_gone()


def _failure(result: GenerationResult) -> GatewayError | None:
    if result.finish_reason == "error":
        code, message = result.error_code or ErrorCode.GENERATION, result.error or "generation failed"
        return GatewayError(code, message) if result.retry_after_ms is None else RetryLater(code, message, result.retry_after_ms)
    if result.finish_reason == "cancelled":  # only the engine shutting down cancels a turn whose client stayed
        return GatewayError(ErrorCode.GENERATION, "the turn was cancelled; the server may be shutting down")
    return None


def _usage(result: GenerationResult) -> dict[str, Any]:
    return schema.usage_body(result.prompt_tokens, result.completion_tokens, result.cached_tokens)


@dataclass(frozen=True)
class Reply:
    """The identity every body of one completion shares."""

    id: str
    created: int
    model: str

    async def json(self, stream: AsyncGenerator[ReplyEvent, None]) -> JSONResponse:
        """Wait for the whole turn; raises GatewayError when generation failed."""
        result: GenerationResult | None = None
        calls: tuple[ToolCall, ...] = ()
        async with contextlib.aclosing(stream):
            async for event in stream:
                if isinstance(event, Ended):
                    result = event.result
                elif isinstance(event, ToolCalled):
                    calls += event.calls
        if result is None:  # the client has gone; nobody will read this
            return JSONResponse(None, status_code=499)
        if (failure := _failure(result)) is not None:
            raise failure
        body = schema.completion_body(self.id, self.created, self.model, result.text, result.finish_reason, _usage(result), calls)
        return JSONResponse(body)

    async def sse(self, stream: AsyncGenerator[ReplyEvent, None], include_usage: bool) -> AsyncGenerator[bytes, None]:
        """`chat.completion.chunk` events: the role, each delta, the finish reason, the usage if asked, [DONE]."""
        yield self._chunk({"role": "assistant", "content": ""})
        async for event in stream:
            if isinstance(event, Delta):
                yield self._chunk({"content": event.text})
            elif isinstance(event, ToolCalled):  # whole calls, each in one delta with its index
                yield self._chunk({"tool_calls": schema.tool_calls_body(event.calls, with_index=True)})
            elif (failure := _failure(event.result)) is not None:
                yield schema.sse_event(schema.error_body(failure.message, "server_error", None, failure.code.value))
            else:
                yield self._chunk({}, event.result.finish_reason)
                if include_usage:
                    usage = _usage(event.result)
                    yield schema.sse_event(schema.chunk_body(self.id, self.created, self.model, None, None, usage))
        yield schema.SSE_DONE

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return schema.sse_event(schema.chunk_body(self.id, self.created, self.model, delta, finish_reason))


class EventStreamResponse(StreamingResponse):
    """Server-sent events. The turn's stream watches for the disconnect itself, so unlike Starlette's
    StreamingResponse this never reads `receive`; closing both generators on the way out stops the turn
    even where the server reports a vanished client only by failing a send."""

    def __init__(self, source: AsyncGenerator[ReplyEvent, None], body: AsyncGenerator[bytes, None]) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self._generators: tuple[AsyncGenerator[Any, None], ...] = (body, source)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.stream_response(send)
        except OSError:
            pass  # the client has gone; the finally below stops its turn
        finally:
            for generator in self._generators:
                await generator.aclose()
