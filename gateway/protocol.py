"""The wire contract: frame types, defensive msgpack/JSON decoding with validation, and encoding."""

from __future__ import annotations

import builtins
import json
from typing import Annotated, Any, Literal, Union, get_args

import msgpack
import msgspec
from msgspec import Meta, Struct

from gateway.errors import ErrorCode, GatewayError
from gateway.json_bounds import MAX_JSON_DEPTH, check_json_value

PROTOCOL_VERSION = 2

TurnId = Annotated[str, Meta(min_length=1, max_length=64)]
Temperature = Annotated[float, Meta(ge=0.0, le=5.0)]
TopP = Annotated[float, Meta(gt=0.0, le=1.0)]
TopK = Annotated[int, Meta(ge=0, le=100_000)]
MaxTokens = Annotated[int, Meta(ge=1)]
RepetitionPenalty = Annotated[float, Meta(gt=0.0, le=10.0)]
StopString = Annotated[str, Meta(min_length=1, max_length=128)]
Seed = Annotated[int, Meta(ge=0, le=2**63 - 1)]
FinishReason = Literal["stop", "length", "cancelled", "error", "tool_calls"]


ModelId = Annotated[str, Meta(min_length=1, max_length=256)]


class _Frame(Struct, forbid_unknown_fields=True, tag_field="type"):
    """Base of every frame: a map whose `type` field names the frame."""


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
    max_tokens: MaxTokens | None = None
    repetition_penalty: RepetitionPenalty | None = None
    stop: list[StopString] | None = None
    seed: Seed | None = None
    ignore_eos: bool | None = None
    model: ModelId | None = None  # the base model or an adapter, as listed in `ready.models`
    response_format: ResponseFormat | None = None  # constrains the reply (see gateway/structured.py)
    tools: Annotated[list[ToolSpec], Meta(max_length=64)] | None = None
    tool_choice: ToolChoice | None = None


# ---- client to server -------------------------------------------------------------------------


ImageUrl = Annotated[str, Meta(min_length=1, max_length=4096)]


class TurnFrame(_Frame, tag="turn"):
    id: TurnId
    text: str = ""
    images: list[bytes] = []
    image_urls: list[ImageUrl] = []  # fetched by the server behind its SSRF guard, after `images`
    options: SamplingOptions | None = None


class CancelFrame(_Frame, tag="cancel"):
    id: TurnId


class ResetFrame(_Frame, tag="reset"):
    id: TurnId | None = None


class ConfigureFrame(_Frame, SamplingOptions, tag="configure"):
    """Session defaults: every sampling option, flat in the frame, plus the system prompt."""

    id: TurnId | None = None
    system: Annotated[str, Meta(max_length=32_000)] | None = None


class HistoryRequestFrame(_Frame, tag="history"):
    id: TurnId | None = None
    include_images: bool = False


class PingFrame(_Frame, tag="ping"):
    id: TurnId | None = None


SessionId = Annotated[str, Meta(min_length=1, max_length=64)]
ResumeToken = Annotated[str, Meta(min_length=1, max_length=256)]


class ResumeFrame(_Frame, tag="resume"):
    """Take up an earlier session (before this connection's first turn): its history, its running turn
    and every frame after `last_seq` that the server still holds."""

    session: SessionId
    token: ResumeToken
    last_seq: Annotated[int, Meta(ge=0)] = 0
    id: TurnId | None = None


class ForgetFrame(_Frame, tag="forget"):
    """Delete this session and everything stored for it; the connection goes on with a fresh one."""

    id: TurnId | None = None


class ToolResultFrame(_Frame, tag="tool_result"):
    """The client's answer to a `tool_call`; it joins the history as a tool message."""

    call_id: Annotated[str, Meta(min_length=1, max_length=64)]
    content: Annotated[str, Meta(max_length=256_000)]
    id: TurnId | None = None


ClientFrame = Union[
    TurnFrame, CancelFrame, ResetFrame, ConfigureFrame, HistoryRequestFrame, PingFrame, ResumeFrame, ForgetFrame, ToolResultFrame
]
CLIENT_TYPES: tuple[str, ...] = tuple(str(t.__struct_config__.tag) for t in get_args(ClientFrame))


# ---- server to client -------------------------------------------------------------------------


class _ServerFrame(_Frame, kw_only=True):
    """Base of every server frame: `seq` numbers a session's frames 1, 2, 3, ... across reconnects."""

    seq: int | None = None  # set when the frame joins its session's journal; `resumed` has none


class ReadyFrame(_ServerFrame, tag="ready"):
    session: str
    model: str
    protocol: int
    limits: dict[str, int]
    defaults: dict[str, Any]
    vision: bool
    models: list[str] = []  # every id `model` may name: the base model, then each adapter
    demo: bool = False  # the built-in demo model: random weights, so random replies
    resume_token: str = ""  # the secret that resumes this session from another connection
    token_counter: str = ""  # who counts prompt tokens for trimming: model, upstream, tokenizer, estimate
    durable: bool = False  # sessions are kept in a store that works now, so they outlive a restart


class ResumedFrame(_Frame, tag="resumed"):
    """The answer to `resume`; `replayed` frames with their original `seq` follow, then live ones."""

    session: str
    last_seq: int  # the server's latest seq for this session
    replayed: int
    gap: bool  # frames after the client's last_seq are no longer held: ask for `history`
    id: str | None = None


class ForgottenFrame(_ServerFrame, tag="forgotten"):
    session: str  # the fresh session the connection now has
    resume_token: str  # and its resume token
    id: str | None = None


class AcceptedFrame(_ServerFrame, tag="accepted"):
    id: str
    prompt_tokens: int
    dropped_turns: int = 0


class QueuedFrame(_ServerFrame, tag="queued"):
    id: str
    position: int  # 1 = next to start


class TokenFrame(_ServerFrame, tag="token"):
    id: str
    text: str


class ToolCallFrame(_ServerFrame, tag="tool_call"):
    """A function call in the reply, whole; `done` (finish_reason `tool_calls`) follows the last one."""

    id: str
    call_id: str
    name: str
    arguments: str  # a JSON object, as text


class Usage(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV was held from an earlier turn, not computed again


class Timing(Struct):
    ttft_ms: float | None  # None when no token was produced
    total_ms: float
    tokens_per_s: float


class DoneFrame(_ServerFrame, tag="done"):
    id: str
    finish_reason: FinishReason
    text: str
    usage: Usage
    timing: Timing
    structured: bool | None = None  # with a response_format or a forced tool call: did the reply complete it


class ErrorFrame(_ServerFrame, tag="error"):
    code: str
    message: str
    id: str | None = None
    retry_after_ms: int | None = None  # set with `rate_limited`, `overloaded`, `shutting_down`


class ClosingFrame(_Frame, tag="closing"):
    """The last frame before the server closes the connection, saying why."""

    code: int
    reason: str


class ImageInfo(Struct):
    format: str
    width: int
    height: int
    bytes: int
    sha256: str
    data: builtins.bytes | None = None  # `bytes` is shadowed by the field above


class ToolCallInfo(Struct):
    call_id: str
    name: str
    arguments: str


class HistoryEntry(Struct):
    role: Literal["user", "assistant", "tool"]
    text: str
    id: str | None = None
    images: list[ImageInfo] = []
    partial: bool = False
    tool_calls: list[ToolCallInfo] = []  # an assistant entry's calls
    call_id: str | None = None  # the call a tool entry answers


class HistoryFrame(_ServerFrame, tag="history"):
    system: str | None
    turns: list[HistoryEntry]
    id: str | None = None


class ConfiguredFrame(_ServerFrame, tag="configured"):
    defaults: dict[str, Any]
    id: str | None = None


class ResetDoneFrame(_ServerFrame, tag="reset"):
    id: str | None = None


class PongFrame(_ServerFrame, tag="pong"):
    id: str | None = None


# Every server frame but `resumed` and `closing` (both about the connection) is numbered in its session.
SessionFrame = Union[
    ReadyFrame,
    ForgottenFrame,
    AcceptedFrame,
    QueuedFrame,
    TokenFrame,
    ToolCallFrame,
    DoneFrame,
    ErrorFrame,
    HistoryFrame,
    ConfiguredFrame,
    ResetDoneFrame,
    PongFrame,
]

ServerFrame = Union[SessionFrame, ResumedFrame, ClosingFrame]  # typing flattens it: one tagged union

# msgpack-python refuses these before any object is built: ext types (timestamps too) are never
# part of the protocol, and no legitimate frame nests deeper or wider than this.
_MAX_CONTAINER_LEN = 1024


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=True,
        max_bin_len=len(data),
        max_str_len=len(data),
        max_array_len=_MAX_CONTAINER_LEN,
        max_map_len=_MAX_CONTAINER_LEN,
        max_ext_len=0,
    )


def free_json(response_format: ResponseFormat | None, tools: list[ToolSpec] | None) -> list[tuple[str, Any]]:
    """The free-form JSON among the options, by field: the schema and each tool's parameters."""
    fields: list[tuple[str, Any]] = [
        (f"tools[{i}].function.parameters", t.function.parameters) for i, t in enumerate(tools or ())
    ]
    if isinstance(response_format, JsonSchemaFormat):
        fields.append(("response_format.json_schema.schema", response_format.json_schema.schema))
    return fields


def check_json_size(data: str, max_bytes: int) -> None:
    """Refuse (`too_large`) a JSON text message of more than `max_bytes` UTF-8 bytes before it is parsed.
    A character is at least one byte, so only a short non-ASCII text is encoded to count them."""
    size = len(data) if data.isascii() or len(data) > max_bytes else len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        message = f"a JSON frame of {size} bytes or more; max_json_frame_bytes is {max_bytes}: send big frames as msgpack"
        raise GatewayError(ErrorCode.TOO_LARGE, message)


def decode(data: bytes | str) -> ClientFrame:
    """Decode one client message (binary = msgpack, text = JSON) into a validated frame."""
    frame = _decode_json(data) if isinstance(data, str) else _decode_msgpack(data)
    options = frame.options if isinstance(frame, TurnFrame) else frame if isinstance(frame, ConfigureFrame) else None
    for field, value in free_json(options.response_format, options.tools) if options else ():
        try:
            check_json_value(value, field)
        except GatewayError as exc:
            raise GatewayError(exc.code, exc.message, getattr(frame, "id", None)) from None
    return frame


class _Head(Struct):
    """What an error names of a frame that did not decode: its type and id (other fields are skipped)."""

    type: Any = None
    id: Any = None


_CLIENT_FRAME_FROM_JSON = msgspec.json.Decoder(ClientFrame)
_HEAD_FROM_JSON = msgspec.json.Decoder(_Head)


def _decode_json(data: str) -> ClientFrame:
    """One typed pass: msgspec builds the frame straight from the text, checking every field's type and
    bound and the UTF-16 escapes on the way (a lone surrogate is not valid JSON to it). Only a frame that
    fails is read again, skipping its fields, to name its type and id."""
    try:
        return _CLIENT_FRAME_FROM_JSON.decode(data)  # type: ignore[no-any-return,unused-ignore]
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        failure = exc
    if str(failure).startswith("Integer value out of range"):  # past the digits Python reads: not JSON to us
        raise GatewayError(ErrorCode.BAD_FRAME, "not valid JSON: an integer with too many digits")
    try:
        head: _Head = _HEAD_FROM_JSON.decode(data)
    except msgspec.ValidationError:  # a subclass of DecodeError: first
        raise GatewayError(ErrorCode.BAD_FRAME, "a frame must be a map with a `type` field") from None
    except msgspec.DecodeError as exc:
        raise GatewayError(ErrorCode.BAD_FRAME, f"not valid JSON: {_short(exc)}", _lenient_id(data)) from None
    except RecursionError:  # nested past the parser's reach: the id cannot be read
        raise _too_deep(failure) from None
    frame_id = _echoable_id(head.id)
    _check_type(head.type, frame_id)
    if isinstance(failure, msgspec.ValidationError):
        raise GatewayError(ErrorCode.INVALID_FIELD, str(failure), frame_id)
    if isinstance(failure, RecursionError):
        raise _too_deep(failure) from None
    raise GatewayError(ErrorCode.BAD_FRAME, f"not valid JSON: {_short(failure)}", frame_id)


def _lenient_id(data: str) -> str | None:
    """The id of a frame that is JSON only to Python's lenient parser (NaN, lone surrogates), to echo in
    the error; it runs only on text msgspec refused, at most max_json_frame_bytes of it."""
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return _echoable_id(raw.get("id")) if isinstance(raw, dict) else None


def _too_deep(failure: Exception) -> GatewayError:
    """JSON nested past the parser's reach. The typed decoder goes that deep only inside a free-form field
    (a schema, tool parameters): then it is `invalid_field`; elsewhere it stops at the first wrong type,
    and the frame is `bad_frame`."""
    if isinstance(failure, RecursionError):
        return GatewayError(ErrorCode.INVALID_FIELD, f"a schema or tool parameters nest deeper than {MAX_JSON_DEPTH} levels")
    return GatewayError(ErrorCode.BAD_FRAME, "not valid JSON: nested too deep")


def _decode_msgpack(data: bytes) -> ClientFrame:
    try:
        raw = _unpack(data)
    except (ValueError, RecursionError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise GatewayError(ErrorCode.BAD_FRAME, f"not valid msgpack: {_short(exc)}") from None
    except Exception:  # msgpack raises a zoo of types on hostile input; all mean the same
        raise GatewayError(ErrorCode.BAD_FRAME, "not valid msgpack") from None
    if not isinstance(raw, dict):
        raise GatewayError(ErrorCode.BAD_FRAME, "a frame must be a map with a `type` field")
    frame_id = _echoable_id(raw.get("id"))
    _check_type(raw.get("type"), frame_id)
    try:
        # builtin_types: msgpack attachments must be `bin`; a base64 str is JSON's way only
        return msgspec.convert(raw, ClientFrame, builtin_types=(bytes,))  # type: ignore[no-any-return,unused-ignore]
    except msgspec.ValidationError as exc:
        raise GatewayError(ErrorCode.INVALID_FIELD, str(exc), frame_id) from None


def _check_type(frame_type: Any, frame_id: str | None) -> None:
    if frame_type not in CLIENT_TYPES:
        raise GatewayError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown frame type {frame_type!r}; expected one of {', '.join(CLIENT_TYPES)}",
            frame_id,
        )


def encode(frame: ServerFrame, as_json: bool = False) -> bytes | str:
    """Encode a server frame as msgpack bytes, or as JSON text for clients that spoke JSON."""
    if as_json:
        return msgspec.json.encode(frame).decode()
    return msgspec.msgpack.encode(frame)


def encode_client(frame: ClientFrame, as_json: bool = False) -> bytes | str:
    """Encode a client frame (used by tests, the benchmark and other Python clients)."""
    if as_json:
        return msgspec.json.encode(frame).decode()
    return msgspec.msgpack.encode(frame)


def decode_server(data: bytes | str) -> ServerFrame:
    """Decode a server frame (used by Python clients)."""
    if isinstance(data, bytes):
        return msgspec.msgpack.decode(data, type=ServerFrame)  # type: ignore[no-any-return,unused-ignore]
    return msgspec.json.decode(data, type=ServerFrame)  # type: ignore[no-any-return,unused-ignore]


def _echoable_id(value: Any) -> str | None:
    """A client's id is echoed in errors only when it is a valid id (JSON can smuggle lone surrogates)."""
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
