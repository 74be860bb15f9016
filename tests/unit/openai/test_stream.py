"""One turn's events rendered as an OpenAI reply, with no server: the chunks in order, errors, and a
client that leaves stopping its turn."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest

from gateway.core.events import Accepted, Delta, Ended, Queued, ToolCalled
from gateway.engine.contract import GenerationResult, ToolCall, TurnHandle
from gateway.errors import ErrorCode, GatewayError, RetryLater
from gateway.openai.stream import Reply, ReplyEvent, ReplyEvents, turn_events

REPLY = Reply("chatcmpl-1", 1700000000, "gateway-demo")
CALL = ToolCall("c1", "f", "{}")


def result(finish_reason: Any = "stop", text: str = "hello", **fields: Any) -> Ended:
    return Ended(GenerationResult(finish_reason, text, (1, 2), 3, 1.0, 2.0, 10.0, **fields))


async def events(*items: ReplyEvent) -> AsyncGenerator[ReplyEvent, None]:
    for item in items:
        yield item


async def sse(items: Sequence[ReplyEvent], include_usage: bool = False) -> list[Any]:
    """The stream's events, JSON decoded, with the closing [DONE] as the string "[DONE]"."""
    out = []
    async for event in REPLY.sse(events(*items), include_usage):
        data = event.removeprefix(b"data: ").removesuffix(b"\n\n")
        out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


async def test_a_stream_opens_with_the_role_and_ends_with_finish_reason_then_done() -> None:
    """role delta, each text delta, an empty delta with finish_reason, then [DONE]."""
    chunks = await sse([Delta("hel"), Delta("lo"), result()])
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "hel"}, {"content": "lo"}, {}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-1] == "[DONE]"


async def test_every_chunk_shares_the_completions_identity() -> None:
    """id, created and model are the same in every chunk of one completion."""
    chunks = await sse([Delta("a"), result()])
    assert {(c["id"], c["created"], c["model"]) for c in chunks[:-1]} == {("chatcmpl-1", 1700000000, "gateway-demo")}


async def test_include_usage_adds_a_usage_chunk_before_done() -> None:
    """With include_usage the last chunk before [DONE] has no choices and the turn's usage."""
    chunks = await sse([result()], include_usage=True)
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["total_tokens"] == 5


async def test_tool_calls_stream_as_one_delta_with_their_index() -> None:
    """Calls arrive whole, in one tool_calls delta, each with its index."""
    chunks = await sse([ToolCalled((CALL,)), result("tool_calls", "")])
    assert chunks[1]["choices"][0]["delta"]["tool_calls"][0] == {
        "index": 0,
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": "{}"},
    }


async def test_a_failed_turn_streams_an_error_event_with_its_code() -> None:
    """A turn that failed after the stream began ends with an error event carrying the stable code."""
    chunks = await sse([result("error", "", error="out of memory", error_code=ErrorCode.OVERLOADED)])
    assert chunks[-2] == {"error": {"message": "out of memory", "type": "server_error", "param": None, "code": "overloaded"}}


async def test_json_reply_holds_the_whole_text_and_the_calls() -> None:
    """Without stream, the reply is one completion body with the text and every call."""
    response = await REPLY.json(events(Delta("ignored delta"), ToolCalled((CALL,)), result("tool_calls", "")))
    body = json.loads(bytes(response.body))
    assert body["choices"][0]["message"]["tool_calls"][0]["id"] == "c1" and body["usage"]["prompt_tokens"] == 3


async def test_json_reply_of_a_failed_turn_raises_its_error() -> None:
    """A failed turn raises, with the engine's retry hint kept, for the route's one error table."""
    with pytest.raises(RetryLater) as info:
        await REPLY.json(events(result("error", "", error="busy", error_code=ErrorCode.OVERLOADED, retry_after_ms=250)))
    assert info.value.code is ErrorCode.OVERLOADED and info.value.retry_after_ms == 250


async def test_json_reply_of_a_cancelled_turn_is_a_generation_error() -> None:
    """Only shutdown cancels a turn whose client stayed: that is a `generation` error, not an empty reply."""
    with pytest.raises(GatewayError) as info:
        await REPLY.json(events(result("cancelled", "")))
    assert info.value.code is ErrorCode.GENERATION


async def test_text_waiting_for_a_slow_reader_merges_into_one_delta() -> None:
    """Deltas the reader has not taken yet come out joined, so the buffer is bounded by the turn's text."""
    listen = ReplyEvents()
    for piece in ("a", "b", "c"):
        listen(Delta(piece))
    listen(result())
    first, second = await listen.next(), await listen.next()
    assert first == Delta("abc") and isinstance(second, Ended)


async def test_queue_positions_and_prompt_lengths_are_not_streamed() -> None:
    """OpenAI's stream has no place for `accepted` or `queued`: only text, calls and the end come out."""
    listen = ReplyEvents()
    listen(Accepted(12, 0))
    listen(Queued(1))
    listen(result())
    assert isinstance(await listen.next(), Ended)


async def test_a_client_that_leaves_cancels_its_turn() -> None:
    """http.disconnect ends the events and cancels the engine's turn."""
    listen, handle = ReplyEvents(), TurnHandle()
    disconnect: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive() -> dict[str, Any]:
        return await disconnect.get()

    listen(Delta("partial"))
    seen = []
    async for event in turn_events(listen, handle, receive):
        seen.append(event)
        await disconnect.put({"type": "http.disconnect"})
    assert seen == [Delta("partial")] and handle.cancelled.is_set()


async def test_the_events_end_at_the_result() -> None:
    """The result is the last event; the handle is cancelled on the way out, which a finished turn ignores."""
    listen, handle = ReplyEvents(), TurnHandle()
    listen(result())

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    seen = [event async for event in turn_events(listen, handle, receive)]
    assert len(seen) == 1 and isinstance(seen[0], Ended) and handle.cancelled.is_set()
