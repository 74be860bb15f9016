"""The OpenAI chat-completions request: its wire shapes, decoded and validated once, and its messages for the prompt."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeAlias, TypeVar

import msgspec
from msgspec import Meta, Struct

from gateway.core.json_bounds import MAX_JSON_DEPTH, check_json_value
from gateway.core.request import (
    FunctionName,
    MaxTokens,
    MinP,
    RepetitionPenalty,
    ResponseFormat,
    Seed,
    StopString,
    Temperature,
    ToolChoice,
    ToolSpec,
    TopK,
    TopP,
    free_json,
)
from gateway.engine.contract import ToolCall
from gateway.errors import GatewayError

# Re-exported while the routes and the stream name the response bodies through this module.
from gateway.openai.bodies import (
    SSE_DONE as SSE_DONE,
    chunk_body as chunk_body,
    completion_body as completion_body,
    error_body as error_body,
    sse_event as sse_event,
    tool_calls_body as tool_calls_body,
    usage_body as usage_body,
)

Role = Literal["system", "user", "assistant", "tool"]


class SchemaError(Exception):
    """The request breaks the schema; `param` names the offending field the way OpenAI does."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class TextPart(Struct, tag_field="type", tag="text", forbid_unknown_fields=True):
    text: str


class ImageURL(Struct, forbid_unknown_fields=True):
    url: Annotated[str, Meta(min_length=1)]
    detail: Literal["auto", "low", "high"] | None = None  # accepted and ignored


class ImagePart(Struct, tag_field="type", tag="image_url", forbid_unknown_fields=True):
    image_url: ImageURL


class VideoURL(Struct, forbid_unknown_fields=True):
    url: Annotated[str, Meta(min_length=1)]


class VideoPart(Struct, tag_field="type", tag="video_url", forbid_unknown_fields=True):
    """A video as vLLM takes it: a data: URI or an http(s) URL; its sampled frames reach the model as images."""

    video_url: VideoURL


class CalledFunction(Struct, forbid_unknown_fields=True):
    name: FunctionName
    arguments: str  # a JSON object, as text


class AssistantToolCall(Struct, forbid_unknown_fields=True):
    id: Annotated[str, Meta(min_length=1, max_length=64)]
    type: Literal["function"]
    function: CalledFunction


class Message(Struct, forbid_unknown_fields=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]  # developer is OpenAI's newer name for system
    content: str | list[TextPart | ImagePart | VideoPart] | None = None  # None only for an assistant message with tool_calls
    name: str | None = None  # accepted and ignored
    tool_calls: list[AssistantToolCall] | None = None  # assistant messages
    tool_call_id: Annotated[str, Meta(min_length=1, max_length=64)] | None = None  # tool messages


class StreamOptions(Struct, forbid_unknown_fields=True):
    include_usage: bool = False


_T = TypeVar("_T")
# A field OpenAI defines that is accepted and ignored, but only with the value that changes nothing (NEUTRAL_VALUES).
Neutral: TypeAlias = _T | None


class ChatCompletionRequest(Struct, forbid_unknown_fields=True):
    """Fields OpenAI defines that are absent here (tools, logit_bias, audio, ...) are refused by name."""

    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    stop: StopString | list[StopString] | None = None
    seed: Seed | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    top_k: TopK | None = None  # extension
    min_p: MinP | None = None  # extension (vLLM's)
    repetition_penalty: RepetitionPenalty | None = None  # extension
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ToolSpec], Meta(max_length=64)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None  # accepted; a forced call is always one call
    n: Neutral[int] = None
    presence_penalty: Neutral[float] = None
    frequency_penalty: Neutral[float] = None
    logprobs: Neutral[bool] = None
    store: Neutral[bool] = None
    user: str | None = None  # accepted and ignored

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logprobs": (False,),
    "store": (False,),
}


@dataclass(frozen=True)
class PromptMessage:
    """One message as the engine will see it; image URLs still to be fetched and decoded."""

    role: Role
    text: str
    image_urls: tuple[str, ...]
    param: str  # where it sat in the request, for errors about it
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    video_urls: tuple[str, ...] = ()


_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_FIELD = re.compile(r"(?:unknown|missing required) field `(?P<field>[^`]+)`")


def decode_chat_request(body: bytes) -> ChatCompletionRequest:
    """Decode and validate a chat-completions body; every problem is one SchemaError naming its field."""
    try:
        request = msgspec.json.decode(body, type=ChatCompletionRequest)
    except msgspec.ValidationError as exc:
        raise _schema_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise SchemaError(f"the body is not valid JSON: {str(exc)[:200]}") from None
    except UnicodeDecodeError:  # msgspec lets it through from a string with invalid UTF-8
        raise SchemaError("the body is not valid UTF-8") from None
    except RecursionError:  # only a body far deeper than any field may nest gets here
        raise SchemaError(f"the body nests deeper than {MAX_JSON_DEPTH} levels") from None
    _check_free_json(request)
    _check_consistency(request)
    return request


def _check_free_json(request: ChatCompletionRequest) -> None:
    """The schema and tool parameters within the WebSocket's bounds (gateway/core/json_bounds.py)."""
    for param, value in free_json(request.response_format, request.tools):
        try:
            check_json_value(value, param)
        except GatewayError as exc:
            raise SchemaError(exc.message, param) from None


def _schema_error(text: str) -> SchemaError:
    match = _PATH.search(text)
    path = match.group("path") if match else ""
    message = text[: match.start()] if match else text
    field = _FIELD.search(message)
    if field is not None:
        path = f"{path}.{field.group('field')}" if path else field.group("field")
        if message.startswith("Object contains unknown field"):
            return SchemaError(f"unsupported parameter: {path}", path)
    return SchemaError(f"{path or 'body'}: {message}", path or None)


def _check_consistency(request: ChatCompletionRequest) -> None:
    for name, neutral in NEUTRAL_VALUES.items():
        value = getattr(request, name)
        if value is not None and value not in neutral:
            raise SchemaError(f"{name} is only accepted as {neutral[0]!r}; this server does not support it", name)
    if request.stream_options is not None and not request.stream:
        raise SchemaError("stream_options is only allowed when stream is true", "stream_options")
    for i, message in enumerate(request.messages):
        _check_message(message, f"messages[{i}]")
    both = request.max_tokens is not None and request.max_completion_tokens is not None
    if both and request.max_tokens != request.max_completion_tokens:
        raise SchemaError("max_tokens and max_completion_tokens disagree; send one of them", "max_tokens")


def _check_message(message: Message, param: str) -> None:
    """Tool fields only where they belong; content may be absent only beside tool calls."""
    if message.tool_calls is not None and message.role != "assistant":
        raise SchemaError("tool_calls are only accepted in assistant messages", f"{param}.tool_calls")
    if (message.role == "tool") != (message.tool_call_id is not None):
        raise SchemaError("a tool message needs tool_call_id, and only a tool message has one", f"{param}.tool_call_id")
    if message.content is None and not message.tool_calls:
        raise SchemaError("content is required", f"{param}.content")


def prompt_messages(request: ChatCompletionRequest) -> list[PromptMessage]:
    """Text parts joined by newlines; images only in user messages."""
    messages = []
    for i, message in enumerate(request.messages):
        role: Role = "system" if message.role == "developer" else message.role
        param = f"messages[{i}].content"
        calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ())
        if not isinstance(message.content, list):
            messages.append(PromptMessage(role, message.content or "", (), param, calls, message.tool_call_id))
            continue
        texts = [part.text for part in message.content if isinstance(part, TextPart)]
        urls = tuple(part.image_url.url for part in message.content if isinstance(part, ImagePart))
        videos = tuple(part.video_url.url for part in message.content if isinstance(part, VideoPart))
        if (urls or videos) and role != "user":
            raise SchemaError(f"images and videos are only accepted in user messages, not {message.role}", param)
        messages.append(PromptMessage(role, "\n".join(texts), urls, param, calls, message.tool_call_id, videos))
    return messages
