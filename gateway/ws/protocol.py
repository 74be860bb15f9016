"""The wire contract: frame types, defensive msgpack/JSON decoding with validation, and encoding."""

from __future__ import annotations

import builtins
import json
from typing import Annotated, Any, Literal, Union, get_args

import msgpack
import msgspec
from msgspec import Meta, Struct

from gateway.core.json_bounds import MAX_JSON_DEPTH, check_json_value
from gateway.core.request import (
    FunctionName as FunctionName,
)
from gateway.core.request import (
    FunctionRef as FunctionRef,
)
from gateway.core.request import (
    FunctionSpec as FunctionSpec,
)
from gateway.core.request import (
    JsonObjectFormat as JsonObjectFormat,
)
from gateway.core.request import (
    JsonSchemaFormat as JsonSchemaFormat,
)
from gateway.core.request import (
    JsonSchemaSpec as JsonSchemaSpec,
)
from gateway.core.request import (
    MaxTokens as MaxTokens,
)
from gateway.core.request import (
    ModelId as ModelId,
)
from gateway.core.request import (
    NamedToolChoice as NamedToolChoice,
)
from gateway.core.request import (
    RegexFormat as RegexFormat,
)
from gateway.core.request import (
    RepetitionPenalty as RepetitionPenalty,
)
from gateway.core.request import (
    ResponseFormat as ResponseFormat,
)
from gateway.core.request import (
    SamplingOptions as SamplingOptions,
)
from gateway.core.request import (
    Seed as Seed,
)
from gateway.core.request import (
    StopString as StopString,
)
from gateway.core.request import (
    Temperature as Temperature,
)
from gateway.core.request import (
    TextFormat as TextFormat,
)
from gateway.core.request import (
    ToolChoice as ToolChoice,
)
from gateway.core.request import (
    ToolSpec as ToolSpec,
)
from gateway.core.request import (
    TopK as TopK,
)
from gateway.core.request import (
    TopP as TopP,
)
from gateway.core.request import (
    free_json,
)
from gateway.engine.contract import FinishReason as FinishReason
from gateway.errors import ErrorCode, GatewayError

PROTOCOL_VERSION = 2

TurnId = Annotated[str, Meta(min_length=1, max_length=64)]


class _Frame(Struct, forbid_unknown_fields=True, tag_field="type"):
    """Base of every frame: a map whose `type` field names the frame."""


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


class FrameError(GatewayError):
    """A frame refused while decoding, with the id it carried when one could be read (errors echo it)."""

    def __init__(self, code: ErrorCode, message: str, frame_id: str | None) -> None:
        super().__init__(code, message)
        self.frame_id = frame_id


def decode(data: bytes | str) -> ClientFrame:
    """Decode one client message (binary = msgpack, text = JSON) into a validated frame."""
    try:
        raw = _unpack(data) if isinstance(data, bytes) else json.loads(data)
    except RecursionError as exc:
        if isinstance(data, str):
            raise _too_deep(data, exc) from None
        raise GatewayError(ErrorCode.BAD_FRAME, f"not valid msgpack: {_short(exc)}") from None
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        kind = "msgpack" if isinstance(data, bytes) else "JSON"
        raise GatewayError(ErrorCode.BAD_FRAME, f"not valid {kind}: {_short(exc)}") from None
    except Exception:  # msgpack raises a zoo of types on hostile input; all mean the same
        raise GatewayError(ErrorCode.BAD_FRAME, "not valid msgpack") from None
    if not isinstance(raw, dict):
        raise GatewayError(ErrorCode.BAD_FRAME, "a frame must be a map with a `type` field")
    frame_id = _echoable_id(raw.get("id"))
    frame_type = raw.get("type")
    if frame_type not in CLIENT_TYPES:
        raise FrameError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown frame type {frame_type!r}; expected one of {', '.join(CLIENT_TYPES)}",
            frame_id,
        )
    frame = _typed(data, raw, frame_id)
    options = frame.options if isinstance(frame, TurnFrame) else frame if isinstance(frame, ConfigureFrame) else None
    for field, value in free_json(options.response_format, options.tools) if options else ():
        try:
            check_json_value(value, field)
        except GatewayError as exc:
            raise FrameError(exc.code, exc.message, frame_id) from None
    # Only now is the whole frame known to be shallow enough for a recursive walk.
    if isinstance(data, str) and not _is_valid_unicode(raw):  # "\ud800" escapes are legal JSON, not storable text
        raise FrameError(ErrorCode.BAD_FRAME, "a string holds a lone UTF-16 surrogate", frame_id)
    return frame


def _too_deep(data: str, exc: RecursionError) -> GatewayError:
    """JSON nested past the parser's reach. The typed decoder goes that deep only inside a free-form field
    (a schema, tool parameters): then it is `invalid_field` (the id cannot be read); elsewhere `bad_frame`."""
    try:
        msgspec.json.decode(data, type=ClientFrame)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return GatewayError(ErrorCode.BAD_FRAME, f"not valid JSON: {_short(exc)}")
    except RecursionError:
        pass
    return GatewayError(ErrorCode.INVALID_FIELD, f"a schema or tool parameters nest deeper than {MAX_JSON_DEPTH} levels")


def _typed(data: bytes | str, raw: Any, frame_id: str | None) -> ClientFrame:
    try:
        if isinstance(data, bytes):
            # builtin_types: msgpack attachments must be `bin`; a base64 str is JSON's way only
            return msgspec.convert(raw, ClientFrame, builtin_types=(bytes,))  # type: ignore[no-any-return,unused-ignore]
        # JSON carries attachments as base64 strings; the typed decoder turns them into bytes.
        return msgspec.json.decode(data, type=ClientFrame)  # type: ignore[no-any-return,unused-ignore]
    except msgspec.ValidationError as exc:
        raise FrameError(ErrorCode.INVALID_FIELD, str(exc), frame_id) from None
    except msgspec.DecodeError as exc:
        raise FrameError(ErrorCode.BAD_FRAME, _short(exc), frame_id) from None


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


def _is_valid_unicode(value: Any) -> bool:
    """Every string in an already schema- and depth-checked (so shallow) JSON value encodes as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_is_valid_unicode(k) and _is_valid_unicode(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_valid_unicode(v) for v in value)
    return True


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
