"""The chat-completions request decoded once: every problem one SchemaError naming its field as OpenAI would."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.openai.schema import SchemaError, decode_chat_request, prompt_messages

USER = {"role": "user", "content": "hi"}


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": [USER]} | fields).encode()


def refusal(raw: bytes) -> SchemaError:
    with pytest.raises(SchemaError) as info:
        decode_chat_request(raw)
    return info.value


def test_a_minimal_request_decodes() -> None:
    """Model and one message are enough; unset options stay None."""
    request = decode_chat_request(body())
    assert (request.model, request.temperature, request.max_new_tokens, request.stop_strings) == ("m", None, None, ())


def test_an_unknown_field_is_an_unsupported_parameter() -> None:
    """A field OpenAI has and the gateway does not (logit_bias) is refused by name, never ignored."""
    error = refusal(body(logit_bias={"1": 2}))
    assert error.param == "logit_bias" and "unsupported parameter" in error.message


def test_a_bad_value_names_its_path() -> None:
    """An out-of-range value inside a message names the message's field path."""
    error = refusal(body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}]))
    assert error.param == "messages[0].content[0].image_url.url"


def test_a_missing_required_field_is_named() -> None:
    """A body without `model` names model."""
    assert refusal(json.dumps({"messages": [USER]}).encode()).param == "model"


def test_no_messages_is_refused() -> None:
    """An empty message list is refused: there is nothing to reply to."""
    assert refusal(body(messages=[])).param == "messages"


@pytest.mark.parametrize("raw", [b"{", b"\xff\xfe", b"[]"])
def test_a_body_that_is_not_a_json_object_is_refused(raw: bytes) -> None:
    """Broken JSON, invalid UTF-8 or a non-object body: a SchemaError, never an exception leaking out."""
    refusal(raw)


def test_deep_nesting_in_a_schema_names_the_schema() -> None:
    """A response_format schema past the JSON depth bound is refused at its field, as on the WebSocket."""
    deep: dict[str, Any] = {}
    for _ in range(200):
        deep = {"items": deep}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": deep}}
    assert refusal(body(response_format=fmt)).param == "response_format.json_schema.schema"


@pytest.mark.parametrize(("field", "value"), [("n", 2), ("presence_penalty", 0.5), ("logprobs", True)])
def test_ignored_fields_accept_only_their_neutral_value(field: str, value: Any) -> None:
    """n, penalties and logprobs are accepted only with the value that changes nothing."""
    decode_chat_request(body(**{field: {"n": 1, "presence_penalty": 0, "logprobs": False}[field]}))
    assert refusal(body(**{field: value})).param == field


def test_stream_options_need_stream() -> None:
    """stream_options without stream: true is refused."""
    assert refusal(body(stream_options={"include_usage": True})).param == "stream_options"


def test_max_tokens_and_max_completion_tokens_must_agree() -> None:
    """Both may be sent only with one value; max_completion_tokens alone is the bound."""
    assert refusal(body(max_tokens=5, max_completion_tokens=6)).param == "max_tokens"
    assert decode_chat_request(body(max_completion_tokens=6)).max_new_tokens == 6


def test_a_tool_message_needs_its_call_id() -> None:
    """A tool message without tool_call_id names that field."""
    error = refusal(body(messages=[USER, {"role": "tool", "content": "21"}]))
    assert error.param == "messages[1].tool_call_id"


def test_tool_calls_only_in_assistant_messages() -> None:
    """tool_calls on a user message are refused."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    error = refusal(body(messages=[{"role": "user", "content": "hi", "tool_calls": [call]}]))
    assert error.param == "messages[0].tool_calls"


def test_prompt_messages_join_text_parts_and_keep_image_urls() -> None:
    """A user message's text parts join with newlines; its image URLs stay in order for fetching."""
    content = [
        {"type": "text", "text": "a"},
        {"type": "image_url", "image_url": {"url": "data:x"}},
        {"type": "text", "text": "b"},
    ]
    (message,) = prompt_messages(decode_chat_request(body(messages=[{"role": "user", "content": content}])))
    assert (message.role, message.text, message.image_urls) == ("user", "a\nb", ("data:x",))


def test_developer_is_the_system_role() -> None:
    """OpenAI's `developer` role reaches the prompt as system."""
    request = decode_chat_request(body(messages=[{"role": "developer", "content": "be brief"}, USER]))
    assert prompt_messages(request)[0].role == "system"


def test_images_only_in_user_messages() -> None:
    """An image in an assistant message is refused at that message's content."""
    content = [{"type": "image_url", "image_url": {"url": "data:x"}}]
    request = decode_chat_request(body(messages=[USER, {"role": "assistant", "content": content}]))
    with pytest.raises(SchemaError) as info:
        prompt_messages(request)
    assert info.value.param == "messages[1].content"


def test_assistant_tool_calls_reach_the_prompt() -> None:
    """An assistant message's calls become ToolCalls; the tool message keeps the id it answers."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    _, assistant, tool = prompt_messages(decode_chat_request(body(messages=messages)))
    assert [(c.id, c.name) for c in assistant.tool_calls] == [("c1", "f")] and tool.tool_call_id == "c1"
