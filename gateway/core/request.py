"""What a client asks of a turn, whichever front end it came through: sampling options, output formats, tools."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from msgspec import Meta, Struct

from gateway.core.live_view import LiveView
from gateway.engine.contract import ToolCall

Temperature = Annotated[float, Meta(ge=0.0, le=5.0)]
TopP = Annotated[float, Meta(gt=0.0, le=1.0)]
TopK = Annotated[int, Meta(ge=0, le=100_000)]
MinP = Annotated[float, Meta(ge=0.0, le=1.0)]
MaxTokens = Annotated[int, Meta(ge=1)]
RepetitionPenalty = Annotated[float, Meta(gt=0.0, le=10.0)]
StopString = Annotated[str, Meta(min_length=1, max_length=128)]
Seed = Annotated[int, Meta(ge=0, le=2**63 - 1)]


ModelId = Annotated[str, Meta(min_length=1, max_length=256)]


class TextFormat(Struct, forbid_unknown_fields=True, tag_field="type", tag="text"):
    """Free text: no constraint (OpenAI's default)."""


class JsonObjectFormat(Struct, forbid_unknown_fields=True, tag_field="type", tag="json_object"):
    """Any JSON object."""


class JsonSchemaSpec(Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    schema: dict[str, Any] = {}  # a JSON Schema; {} allows any JSON value
    strict: bool | None = None  # accepted; the schema is always enforced
    description: str | None = None


class JsonSchemaFormat(Struct, forbid_unknown_fields=True, tag_field="type", tag="json_schema"):
    """JSON valid under `json_schema.schema`."""

    json_schema: JsonSchemaSpec


class RegexFormat(Struct, forbid_unknown_fields=True, tag_field="type", tag="regex"):
    """Text matching a regular expression as a whole (an extension)."""

    regex: Annotated[str, Meta(min_length=1, max_length=4096)]


ResponseFormat = Union[TextFormat, JsonObjectFormat, JsonSchemaFormat, RegexFormat]
FunctionName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class FunctionSpec(Struct, forbid_unknown_fields=True):
    name: FunctionName
    description: Annotated[str, Meta(max_length=4096)] | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema for the arguments object
    strict: bool | None = None  # accepted; a forced call always follows `parameters`


class ToolSpec(Struct, forbid_unknown_fields=True):
    """One tool in OpenAI's shape: {"type": "function", "function": {...}}."""

    type: Literal["function"]
    function: FunctionSpec


class FunctionRef(Struct, forbid_unknown_fields=True):
    name: FunctionName


class NamedToolChoice(Struct, forbid_unknown_fields=True):
    type: Literal["function"]
    function: FunctionRef


ToolChoice = Union[Literal["auto", "none", "required"], NamedToolChoice]


class SamplingOptions(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Sampling parameters; unset fields fall back to the session's, then the server's defaults."""

    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    max_tokens: MaxTokens | None = None
    repetition_penalty: RepetitionPenalty | None = None
    stop: list[StopString] | None = None
    seed: Seed | None = None
    ignore_eos: bool | None = None
    model: ModelId | None = None  # the base model or an adapter, as listed in `ready.models`
    response_format: ResponseFormat | None = None  # constrains the reply (see gateway/structured.py)
    tools: Annotated[list[ToolSpec], Meta(max_length=64)] | None = None
    tool_choice: ToolChoice | None = None


def free_json(response_format: ResponseFormat | None, tools: list[ToolSpec] | None) -> list[tuple[str, Any]]:
    """The free-form JSON among the options, by field: the schema and each tool's parameters."""
    fields: list[tuple[str, Any]] = [
        (f"tools[{i}].function.parameters", t.function.parameters) for i, t in enumerate(tools or ())
    ]
    if isinstance(response_format, JsonSchemaFormat):
        fields.append(("response_format.json_schema.schema", response_format.json_schema.schema))
    return fields


# ---- what a front end maps its request into, once ------------------------------------------------


@dataclass(frozen=True)
class TurnRequest:
    """One turn of a session (the WebSocket's `turn` frame): the user's text and images, and its options."""

    id: str
    text: str
    images: Sequence[bytes] = ()
    image_urls: Sequence[str] = ()  # fetched behind the SSRF guard, after `images`
    options: SamplingOptions | None = None
    videos: Sequence[bytes] = ()  # MP4, WebM or GIF: their sampled frames follow the images
    live: LiveView | None = None  # answered over these frames of a live window, after the images
    traceparent: str | None = None  # the W3C trace context the client sent (on the WebSocket handshake)


@dataclass(frozen=True)
class RequestMessage:
    """One message of a stateless conversation, its image URLs still to fetch; `field` is where it sat in the
    request, for errors about it."""

    role: Literal["system", "user", "assistant", "tool"]
    text: str
    image_urls: tuple[str, ...] = ()
    field: str = "messages"
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    video_urls: tuple[str, ...] = ()  # data: URIs or fetched URLs; each video's frames follow the images


@dataclass(frozen=True)
class ConversationRequest:
    """A stateless turn (the OpenAI API): the whole conversation and its options. Unset `max_tokens` means what
    the context window leaves, at most the server's default."""

    messages: Sequence[RequestMessage]
    options: SamplingOptions = field(default_factory=lambda: SamplingOptions())
