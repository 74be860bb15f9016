"""The wire contract: frame types, defensive msgpack/JSON decoding with validation, and encoding."""

from __future__ import annotations

import json
from typing import Annotated, Any, Union, get_args

import msgpack
import msgspec
from msgspec import Meta, Struct

from gateway.core.json_bounds import MAX_JSON_DEPTH, check_json_value
from gateway.core.request import (
    FunctionName as FunctionName,
    FunctionRef as FunctionRef,
    FunctionSpec as FunctionSpec,
    JsonObjectFormat as JsonObjectFormat,
    JsonSchemaFormat as JsonSchemaFormat,
    JsonSchemaSpec as JsonSchemaSpec,
    MaxTokens as MaxTokens,
    ModelId as ModelId,
    NamedToolChoice as NamedToolChoice,
    RegexFormat as RegexFormat,
    RepetitionPenalty as RepetitionPenalty,
    ResponseFormat as ResponseFormat,
    SamplingOptions as SamplingOptions,
    Seed as Seed,
    StopString as StopString,
    Temperature as Temperature,
    TextFormat as TextFormat,
    ToolChoice as ToolChoice,
    ToolSpec as ToolSpec,
    TopK as TopK,
    TopP as TopP,
    free_json,
)
from gateway.engine.contract import FinishReason as FinishReason
from gateway.errors import ErrorCode, GatewayError
from gateway.ws.frames import (
    PROTOCOL_VERSION as PROTOCOL_VERSION,
    AcceptedFrame as AcceptedFrame,
    ClosingFrame as ClosingFrame,
    ConfiguredFrame as ConfiguredFrame,
    DoneFrame as DoneFrame,
    ErrorFrame as ErrorFrame,
    ForgottenFrame as ForgottenFrame,
    ForkedFrame as ForkedFrame,
    Frame as Frame,
    HistoryEntry as HistoryEntry,
    HistoryFrame as HistoryFrame,
    ImageInfo as ImageInfo,
    PongFrame as PongFrame,
    QueuedFrame as QueuedFrame,
    ReadyFrame as ReadyFrame,
    ResetDoneFrame as ResetDoneFrame,
    ResumedFrame as ResumedFrame,
    ServerBase as ServerBase,
    ServerFrame as ServerFrame,
    SessionFrame as SessionFrame,
    Timing as Timing,
    TokenFrame as TokenFrame,
    ToolCallFrame as ToolCallFrame,
    ToolCallInfo as ToolCallInfo,
    TurnId as TurnId,
    Usage as Usage,
)

# ---- client to server -------------------------------------------------------------------------


class _ClientFrame(Struct, forbid_unknown_fields=True, tag_field="type"):
    """Base of every client frame: a map whose `type` field names the frame."""


ImageUrl = Annotated[str, Meta(min_length=1, max_length=4096)]


class TurnFrame(_ClientFrame, tag="turn"):
    id: TurnId
    text: str = ""
    images: list[bytes] = []
    image_urls: list[ImageUrl] = []  # fetched by the server behind its SSRF guard, after `images`
    options: SamplingOptions | None = None


ItemId = Annotated[str, Meta(min_length=1, max_length=64)]


class RegenerateFrame(_ClientFrame, tag="regenerate"):
    """A new reply in place of reply `item_id` (default: the last); the old one stays as its sibling."""

    id: TurnId
    item_id: ItemId | None = None
    options: SamplingOptions | None = None


class TruncateFrame(_ClientFrame, tag="truncate"):
    """Reply `item_id` keeps its first `chars` characters (what the client showed); answered by `history`."""

    item_id: ItemId
    chars: Annotated[int, Meta(ge=0)]
    id: TurnId | None = None


class ForkFrame(_ClientFrame, tag="fork"):
    """A new session holding the path to `item_id` (default: the active path); answered by `forked`."""

    item_id: ItemId | None = None
    id: TurnId | None = None


class SwitchFrame(_ClientFrame, tag="switch"):
    """Make the branch through `item_id` active; answered by `history`."""

    item_id: ItemId
    id: TurnId | None = None


class CancelFrame(_ClientFrame, tag="cancel"):
    id: TurnId


class ResetFrame(_ClientFrame, tag="reset"):
    id: TurnId | None = None


class ConfigureFrame(_ClientFrame, SamplingOptions, tag="configure"):
    """Session defaults: every sampling option, flat in the frame, plus the system prompt."""

    id: TurnId | None = None
    system: Annotated[str, Meta(max_length=32_000)] | None = None


class HistoryRequestFrame(_ClientFrame, tag="history"):
    id: TurnId | None = None
    include_images: bool = False


class PingFrame(_ClientFrame, tag="ping"):
    id: TurnId | None = None


SessionId = Annotated[str, Meta(min_length=1, max_length=64)]
ResumeToken = Annotated[str, Meta(min_length=1, max_length=256)]


class ResumeFrame(_ClientFrame, tag="resume"):
    """Take up an earlier session (before this connection's first turn): its history, its running turn
    and every frame after `last_seq` that the server still holds."""

    session: SessionId
    token: ResumeToken
    last_seq: Annotated[int, Meta(ge=0)] = 0
    id: TurnId | None = None


class ForgetFrame(_ClientFrame, tag="forget"):
    """Delete this session and everything stored for it; the connection goes on with a fresh one."""

    id: TurnId | None = None


class ToolResultFrame(_ClientFrame, tag="tool_result"):
    """The client's answer to a `tool_call`; it joins the history as a tool message."""

    call_id: Annotated[str, Meta(min_length=1, max_length=64)]
    content: Annotated[str, Meta(max_length=256_000)]
    id: TurnId | None = None


ClientFrame = Union[
    TurnFrame,
    CancelFrame,
    ResetFrame,
    ConfigureFrame,
    HistoryRequestFrame,
    PingFrame,
    ResumeFrame,
    ForgetFrame,
    ToolResultFrame,
    RegenerateFrame,
    SwitchFrame,
    TruncateFrame,
    ForkFrame,
]
CLIENT_TYPES: tuple[str, ...] = tuple(str(t.__struct_config__.tag) for t in get_args(ClientFrame))


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
    options = frame if isinstance(frame, ConfigureFrame) else getattr(frame, "options", None)
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
