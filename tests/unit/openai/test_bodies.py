"""The response shapes the official SDK parses: completions, chunks, usage, errors and server-sent events."""

from __future__ import annotations

import json

from gateway.engine.contract import ToolCall
from gateway.openai.bodies import SSE_DONE, chunk_body, completion_body, error_body, sse_event, tool_calls_body, usage_body

CALL = ToolCall("c1", "get_weather", '{"city": "Paris"}')


def test_usage_totals_prompt_and_completion_and_reports_cached_tokens() -> None:
    """total_tokens is their sum; cached prompt tokens sit under prompt_tokens_details."""
    usage = usage_body(10, 5, cached_tokens=4)
    assert (usage["total_tokens"], usage["prompt_tokens_details"]) == (15, {"cached_tokens": 4})


def test_a_completion_without_calls_carries_its_text() -> None:
    """One choice, the assistant's text, the finish reason and the usage."""
    body = completion_body("id1", 1, "m", "hello", "stop", usage_body(1, 1))
    (choice,) = body["choices"]
    assert body["object"] == "chat.completion" and choice["message"] == {"role": "assistant", "content": "hello"}
    assert choice["finish_reason"] == "stop"


def test_a_completion_with_calls_has_null_content_when_it_wrote_no_text() -> None:
    """A reply that only called tools: content null and the calls in OpenAI's shape."""
    (choice,) = completion_body("id1", 1, "m", "", "tool_calls", usage_body(1, 1), calls=[CALL])["choices"]
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ]


def test_stream_deltas_number_their_calls() -> None:
    """In a stream each call carries its index; in a whole reply it does not."""
    assert tool_calls_body([CALL, CALL], with_index=True)[1]["index"] == 1
    assert "index" not in tool_calls_body([CALL])[0]


def test_the_usage_only_chunk_has_no_choices() -> None:
    """With delta None the chunk is the usage-only one `include_usage` asks for."""
    chunk = chunk_body("id1", 1, "m", None, usage=usage_body(1, 2))
    assert chunk["object"] == "chat.completion.chunk" and chunk["choices"] == [] and chunk["usage"]["total_tokens"] == 3


def test_a_delta_chunk_has_one_choice_with_its_finish_reason() -> None:
    """A content delta is choice 0; its finish_reason is null until the last chunk."""
    (choice,) = chunk_body("id1", 1, "m", {"content": "hi"})["choices"]
    assert (choice["index"], choice["delta"], choice["finish_reason"]) == (0, {"content": "hi"}, None)


def test_errors_have_openais_shape() -> None:
    """message, type, param and code under `error`, param and code null when unknown."""
    assert error_body("bad", "invalid_request_error") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}
    }


def test_server_sent_events_are_data_lines_ending_in_a_blank_line() -> None:
    """Each event is one `data:` line with compact JSON; the stream ends with `data: [DONE]`."""
    event = sse_event({"a": 1})
    assert event.startswith(b"data: ") and event.endswith(b"\n\n") and json.loads(event[6:]) == {"a": 1}
    assert SSE_DONE == b"data: [DONE]\n\n"
