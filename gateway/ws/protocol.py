"""The wire contract: frame types, defensive msgpack/JSON decoding with validation, and encoding."""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import msgpack
import msgspec
from msgspec import Struct

from gateway.core.json_bounds import MAX_JSON_DEPTH, json_value_checks
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
from gateway.ws.client_frames import (
    CLIENT_TYPES as CLIENT_TYPES,
    CancelFrame as CancelFrame,
    ClientFrame as ClientFrame,
    ConfigureFrame as ConfigureFrame,
    DeleteFrame as DeleteFrame,
    EditFrame as EditFrame,
    ForgetFrame as ForgetFrame,
    ForkFrame as ForkFrame,
    HistoryRequestFrame as HistoryRequestFrame,
    ImageUrl as ImageUrl,
    InsertFrame as InsertFrame,
    ItemId as ItemId,
    LiveImageFrame as LiveImageFrame,
    LiveSpec as LiveSpec,
    PingFrame as PingFrame,
    RegenerateFrame as RegenerateFrame,
    ResetFrame as ResetFrame,
    ResumeFrame as ResumeFrame,
    ResumeToken as ResumeToken,
    SessionId as SessionId,
    SourceName as SourceName,
    SwitchFrame as SwitchFrame,
    ToolResultFrame as ToolResultFrame,
    TruncateFrame as TruncateFrame,
    TurnFrame as TurnFrame,
    UnwatchFrame as UnwatchFrame,
    WatchFrame as WatchFrame,
)
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
    LiveFramesInfo as LiveFramesInfo,
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
from gateway.ws.msgpack_slices import TooManyValues, finish, unpack_steps


class FrameError(GatewayError):
    """A frame refused while decoding, with the id it carried when one could be read (errors echo it)."""

    def __init__(self, code: ErrorCode, message: str, frame_id: str | None) -> None:
        super().__init__(code, message)
        self.frame_id = frame_id


def check_json_size(data: str, max_bytes: int) -> None:
    """Refuse (`too_large`) a JSON text message of more than `max_bytes` UTF-8 bytes before it is parsed.
    A character is at least one byte, so only a short non-ASCII text is encoded to count them."""
    size = len(data) if data.isascii() or len(data) > max_bytes else len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        message = f"a JSON frame of {size} bytes or more; max_json_frame_bytes is {max_bytes}: send big frames as msgpack"
        raise GatewayError(ErrorCode.TOO_LARGE, message)


def decode(data: bytes | str) -> ClientFrame:
    """Decode one client message (binary = msgpack, text = JSON) into a validated frame."""
    frame: ClientFrame = finish(decode_steps(data))
    return frame


def decode_steps(data: bytes | str) -> Generator[None, None, ClientFrame]:
    """`decode` a slice at a time: a generator that yields between slices of work (unpacking msgpack,
    checking free-form JSON) and returns the frame, so the reader can let other clients' work run in
    between (ws/connection.py); a JSON frame, bounded by max_json_frame_bytes, is parsed in one."""
    frame = _decode_json(data) if isinstance(data, str) else (yield from _decode_msgpack(data))
    for field, value in frame_json(frame):
        try:
            yield from json_value_checks(value, field)
        except GatewayError as exc:
            raise FrameError(exc.code, exc.message, getattr(frame, "id", None)) from None
    return frame


def frame_json(frame: ClientFrame) -> list[tuple[str, Any]]:
    """The frame's free-form JSON, by field: its options' schema and tool parameters (a turn's, an edit's,
    a configure's own)."""
    options = frame if isinstance(frame, ConfigureFrame) else getattr(frame, "options", None)
    return free_json(options.response_format, options.tools) if options else []


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
        raise FrameError(ErrorCode.BAD_FRAME, f"not valid JSON: {_short(exc)}", _lenient_id(data)) from None
    except RecursionError:  # nested past the parser's reach: the id cannot be read
        raise _too_deep(failure) from None
    frame_id = _echoable_id(head.id)
    _check_type(head.type, frame_id)
    if isinstance(failure, msgspec.ValidationError):
        raise FrameError(ErrorCode.INVALID_FIELD, str(failure), frame_id)
    if isinstance(failure, RecursionError):
        raise _too_deep(failure) from None
    raise FrameError(ErrorCode.BAD_FRAME, f"not valid JSON: {_short(failure)}", frame_id)


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


def _decode_msgpack(data: bytes) -> Generator[None, None, ClientFrame]:
    try:
        raw = yield from unpack_steps(data)
    except TooManyValues as exc:
        raise GatewayError(ErrorCode.BAD_FRAME, f"a frame too wide: {exc}") from None
    except (ValueError, RecursionError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, msgspec.DecodeError) as exc:
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
        raise FrameError(ErrorCode.INVALID_FIELD, str(exc), frame_id) from None


def _check_type(frame_type: Any, frame_id: str | None) -> None:
    if frame_type not in CLIENT_TYPES:
        raise FrameError(
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
