"""Tests for gateway.ws.protocol: client/server round trips and every decode error path, with no server."""

from __future__ import annotations

import base64
import json
import tracemalloc
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.errors import ErrorCode, GatewayError
from gateway.ws import protocol
from gateway.ws.protocol import (
    CLIENT_TYPES,
    AcceptedFrame,
    CancelFrame,
    ConfiguredFrame,
    ConfigureFrame,
    DoneFrame,
    ErrorFrame,
    HistoryEntry,
    HistoryFrame,
    HistoryRequestFrame,
    ImageInfo,
    PingFrame,
    PongFrame,
    ReadyFrame,
    ResetDoneFrame,
    ResetFrame,
    SamplingOptions,
    Timing,
    TokenFrame,
    TurnFrame,
    Usage,
)

IMAGE = b"\x89PNG\r\n\x1a\n\x00\xff fake image bytes \x00"

CLIENT_FRAMES = [
    TurnFrame(id="t1", text="hello, 你好 😀"),
    TurnFrame(
        id="t2",
        text="describe",
        images=[IMAGE, b"\x00\x01"],
        options=SamplingOptions(
            temperature=0.7, top_p=0.9, top_k=40, max_tokens=64, repetition_penalty=1.1, stop=["\n\n"], seed=3
        ),
    ),
    CancelFrame(id="t1"),
    ResetFrame(),
    ResetFrame(id="r1"),
    ConfigureFrame(system="be brief", temperature=0.0, top_k=1, stop=["END"], seed=0),
    ConfigureFrame(id="c1", system=""),
    HistoryRequestFrame(),
    HistoryRequestFrame(id="h1", include_images=True),
    PingFrame(),
    PingFrame(id="p1"),
]

SERVER_FRAMES = [
    ReadyFrame(
        session="s1",
        model="gateway-demo",
        protocol=protocol.PROTOCOL_VERSION,
        limits={"max_images": 4},
        defaults={"temperature": 0.7, "stop": ["x"]},
        vision=True,
    ),
    AcceptedFrame(id="t1", prompt_tokens=12, dropped_turns=2),
    TokenFrame(id="t1", text="é😀"),
    DoneFrame(
        id="t1",
        finish_reason="stop",
        text="hi",
        usage=Usage(prompt_tokens=12, completion_tokens=2, total_tokens=14),
        timing=Timing(ttft_ms=None, total_ms=3.5, tokens_per_s=0.0),
    ),
    ErrorFrame(code=ErrorCode.BUSY.value, message="a turn is running", id="t2"),
    ErrorFrame(code=ErrorCode.BAD_FRAME.value, message="not valid msgpack"),
    HistoryFrame(
        system="sys",
        turns=[
            HistoryEntry(
                role="user",
                text="look",
                id="t1",
                images=[ImageInfo(format="png", width=2, height=3, bytes=len(IMAGE), sha256="ab", data=IMAGE)],
            ),
            HistoryEntry(role="assistant", text="a cat", id="t1", partial=True),
        ],
        id="h1",
    ),
    ConfiguredFrame(defaults={"temperature": 0.5}, id="c1"),
    ResetDoneFrame(id="r1"),
    PongFrame(),
]


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def decode_error(data: bytes | str) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        protocol.decode(data)
    return info.value


# ---- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", CLIENT_FRAMES, ids=lambda f: type(f).__name__)
def test_client_frame_round_trips_through_msgpack(frame: Any) -> None:
    """Every client frame encoded as msgpack decodes back to an equal frame."""
    data = protocol.encode_client(frame)
    assert isinstance(data, bytes)
    assert protocol.decode(data) == frame


@pytest.mark.parametrize("frame", CLIENT_FRAMES, ids=lambda f: type(f).__name__)
def test_client_frame_round_trips_through_json(frame: Any) -> None:
    """Every client frame encoded as JSON text decodes back to an equal frame."""
    data = protocol.encode_client(frame, as_json=True)
    assert isinstance(data, str)
    assert protocol.decode(data) == frame


def test_json_turn_carries_images_as_base64() -> None:
    """A JSON turn frame carries each image as a base64 string and decodes it back to bytes."""
    text = json.dumps({"type": "turn", "id": "t", "images": [base64.b64encode(IMAGE).decode()]})
    frame = protocol.decode(text)
    assert isinstance(frame, TurnFrame)
    assert frame.images == [IMAGE]


def test_msgpack_turn_carries_images_as_bin() -> None:
    """A msgpack turn frame carries each image as a bin value and decodes it unchanged."""
    frame = protocol.decode(pack({"type": "turn", "id": "t", "images": [IMAGE]}))
    assert isinstance(frame, TurnFrame)
    assert frame.images == [IMAGE]


def test_turn_defaults_apply_to_omitted_fields() -> None:
    """A minimal turn frame gets empty text, no images and no options."""
    frame = protocol.decode(pack({"type": "turn", "id": "t"}))
    assert frame == TurnFrame(id="t", text="", images=[], options=None)


@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=lambda f: type(f).__name__)
def test_server_frame_encodes_as_msgpack(frame: Any) -> None:
    """Every server frame encodes as a msgpack map of its fields, tagged with its type."""
    data = protocol.encode(frame)
    assert isinstance(data, bytes)
    assert msgpack.unpackb(data, raw=False) == msgspec.to_builtins(frame, builtin_types=(bytes,))


@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=lambda f: type(f).__name__)
def test_server_frame_encodes_as_json(frame: Any) -> None:
    """Every server frame encodes as a JSON object of its fields (bytes as base64), tagged with its type."""
    data = protocol.encode(frame, as_json=True)
    assert isinstance(data, str)
    assert json.loads(data) == msgspec.to_builtins(frame)


@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=lambda f: type(f).__name__)
def test_server_frame_round_trips_through_msgpack(frame: Any) -> None:
    """Every server frame encoded as msgpack is turned back into it by decode_server."""
    assert protocol.decode_server(protocol.encode(frame)) == frame


@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=lambda f: type(f).__name__)
def test_server_frame_round_trips_through_json(frame: Any) -> None:
    """Every server frame encoded as JSON is turned back into it by decode_server."""
    assert protocol.decode_server(protocol.encode(frame, as_json=True)) == frame


def test_server_frame_json_names_its_type() -> None:
    """An encoded server frame is a map whose `type` field names the frame."""
    assert json.loads(protocol.encode(PongFrame(id="p"), as_json=True)) == {"type": "pong", "id": "p", "seq": None}


# ---- not decodable: bad_frame -----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x81\xa4type", b"\xdc\x00"],
    ids=["empty", "never-used-byte", "truncated-map", "truncated-array16"],
)
def test_invalid_msgpack_is_bad_frame(data: bytes) -> None:
    """Bytes that are not one complete msgpack value are refused as bad_frame."""
    assert decode_error(data).code is ErrorCode.BAD_FRAME


def test_trailing_msgpack_data_is_bad_frame() -> None:
    """A valid frame followed by extra bytes (msgpack ExtraData) is refused as bad_frame."""
    data = pack({"type": "ping"}) + pack({"type": "ping"})
    assert decode_error(data).code is ErrorCode.BAD_FRAME


@pytest.mark.parametrize("value", [[1, 2], "ping", 3, None, b"ping"], ids=repr)
def test_msgpack_top_level_must_be_a_map(value: Any) -> None:
    """A msgpack message whose top level is not a map is refused as bad_frame."""
    assert decode_error(pack(value)).code is ErrorCode.BAD_FRAME


@pytest.mark.parametrize("text", ['["turn"]', '"ping"', "3", "null"])
def test_json_top_level_must_be_an_object(text: str) -> None:
    """A JSON message whose top level is not an object is refused as bad_frame."""
    assert decode_error(text).code is ErrorCode.BAD_FRAME


@pytest.mark.parametrize("text", ["", "{", '{"type": "ping",}', "{'type': 'ping'}", '{"type": "ping"} x'])
def test_invalid_json_is_bad_frame(text: str) -> None:
    """Text that is not one JSON value is refused as bad_frame."""
    assert decode_error(text).code is ErrorCode.BAD_FRAME


def test_json_nan_is_bad_frame() -> None:
    """A JSON NaN literal (not standard JSON) is refused as bad_frame."""
    assert decode_error('{"type": "configure", "temperature": NaN}').code is ErrorCode.BAD_FRAME


@pytest.mark.parametrize(
    "ext",
    [msgpack.ExtType(1, b"ab"), msgpack.Timestamp(1_700_000_000)],
    ids=["ext", "timestamp"],
)
def test_msgpack_ext_types_are_refused(ext: Any) -> None:
    """Ext values, timestamps included, are never part of the protocol: bad_frame."""
    assert decode_error(pack({"type": "ping", "id": ext})).code is ErrorCode.BAD_FRAME


@pytest.mark.parametrize(
    "header",
    [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff"],
    ids=["array32", "map32", "bin32", "str32"],
)
def test_huge_container_headers_are_refused_without_allocating(header: bytes) -> None:
    """A header claiming 4 billion elements or bytes is refused before any memory is reserved."""
    tracemalloc.start()
    try:
        error = decode_error(header)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.code is ErrorCode.BAD_FRAME
    assert peak < 1_000_000


def test_wide_but_short_array_is_refused() -> None:
    """An array longer than the container limit is refused even when every element is present."""
    data = pack({"type": "turn", "id": "t", "images": [b""] * 5000})
    assert decode_error(data).code is ErrorCode.BAD_FRAME


def test_deep_msgpack_nesting_is_bad_frame() -> None:
    """Deeply nested msgpack arrays are refused as bad_frame, not a crash."""
    assert decode_error(b"\x91" * 100_000 + b"\xc0").code is ErrorCode.BAD_FRAME


def test_deep_json_nesting_is_bad_frame() -> None:
    """Deeply nested JSON arrays are refused as bad_frame, not a RecursionError."""
    assert decode_error("[" * 100_000 + "]" * 100_000).code is ErrorCode.BAD_FRAME


def test_integer_map_keys_are_bad_frame() -> None:
    """A map with integer keys is refused as bad_frame."""
    assert decode_error(pack({"type": "ping", 1: "x"})).code is ErrorCode.BAD_FRAME


def test_binary_map_keys_are_invalid_field() -> None:
    """A map with a bin (non-str) key for a field is refused as invalid_field."""
    assert decode_error(pack({"type": "ping", b"id": "x"})).code is ErrorCode.INVALID_FIELD


def test_binary_type_key_is_unknown_type() -> None:
    """A `type` key sent as bin rather than str does not count as a type: unknown_type."""
    assert decode_error(pack({b"type": "ping"})).code is ErrorCode.UNKNOWN_TYPE


def test_invalid_utf8_in_msgpack_str_is_bad_frame() -> None:
    """A msgpack str holding invalid UTF-8 is refused as bad_frame."""
    data = b"\x82\xa4type\xa4turn\xa2id\xa2\xff\xfe"
    assert decode_error(data).code is ErrorCode.BAD_FRAME


def test_lone_surrogate_in_json_is_refused() -> None:
    """A JSON string escaping a lone surrogate (not encodable as UTF-8) is refused as bad_frame."""
    assert decode_error('{"type": "turn", "id": "t", "text": "\\ud800"}').code is ErrorCode.BAD_FRAME


# ---- type: unknown_type -----------------------------------------------------------------------


@pytest.mark.parametrize("data", [pack({"id": "x"}), '{"id": "x"}'], ids=["msgpack", "json"])
def test_missing_type_is_unknown_type(data: bytes | str) -> None:
    """A map without a `type` field is refused as unknown_type."""
    assert decode_error(data).code is ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize("frame_type", ["bogus", "TURN", "ready", 5, None, ["turn"]], ids=repr)
def test_unknown_type_is_refused(frame_type: Any) -> None:
    """A `type` that is not a client frame (server frame names included) is unknown_type."""
    assert decode_error(pack({"type": frame_type})).code is ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize("data", [pack({"type": "bogus", "id": "x7"}), '{"type": "bogus", "id": "x7"}'])
def test_unknown_type_echoes_the_id(data: bytes | str) -> None:
    """An unknown_type error carries the frame's id when the frame had a string id."""
    error = decode_error(data)
    assert (error.code, error.frame_id) == (ErrorCode.UNKNOWN_TYPE, "x7")


def test_unknown_type_without_id_has_no_id() -> None:
    """An unknown_type error for a frame without an id carries no id."""
    assert decode_error(pack({"type": "bogus"})).frame_id is None


# ---- fields: invalid_field --------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "ping", "extra": 1},
        {"type": "turn", "id": "t", "text": "x", "image": []},
        {"type": "turn", "id": "t", "options": {"temprature": 1.0}},
        {"type": "configure", "options": {"temperature": 1.0}},
    ],
    ids=["ping", "turn", "options", "configure"],
)
def test_unknown_field_is_invalid_field(raw: dict[str, Any]) -> None:
    """An unknown field, at top level or inside options, is refused as invalid_field."""
    assert decode_error(pack(raw)).code is ErrorCode.INVALID_FIELD


def test_unknown_field_in_json_is_invalid_field() -> None:
    """An unknown field in a JSON frame is refused as invalid_field."""
    assert decode_error('{"type": "ping", "extra": 1}').code is ErrorCode.INVALID_FIELD


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "turn"},
        {"type": "cancel"},
    ],
    ids=["turn", "cancel"],
)
def test_missing_required_id_is_invalid_field(raw: dict[str, Any]) -> None:
    """A turn or cancel frame without an id is refused as invalid_field."""
    assert decode_error(pack(raw)).code is ErrorCode.INVALID_FIELD


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "turn", "id": 5},
        {"type": "turn", "id": "t", "text": 5},
        {"type": "turn", "id": "t", "text": b"bytes"},
        {"type": "turn", "id": "t", "images": b"not a list"},
        {"type": "turn", "id": "t", "images": [5]},
        {"type": "turn", "id": "t", "options": [1]},
        {"type": "configure", "temperature": "hot"},
        {"type": "configure", "temperature": True},
        {"type": "configure", "top_k": 1.5},
        {"type": "configure", "max_tokens": "10"},
        {"type": "configure", "stop": "END"},
        {"type": "configure", "stop": [1]},
        {"type": "configure", "system": 3},
        {"type": "history", "include_images": "yes"},
        {"type": "cancel", "id": None},
    ],
    ids=lambda raw: ",".join(f"{k}={v!r}" for k, v in raw.items() if k != "type"),
)
def test_mistyped_field_is_invalid_field(raw: dict[str, Any]) -> None:
    """A field of the wrong type is refused as invalid_field."""
    assert decode_error(pack(raw)).code is ErrorCode.INVALID_FIELD


def test_mistyped_field_in_json_is_invalid_field() -> None:
    """A wrongly typed field in a JSON frame is refused as invalid_field."""
    assert decode_error('{"type": "configure", "top_k": "5"}').code is ErrorCode.INVALID_FIELD


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 5.01),
        ("temperature", -0.1),
        ("temperature", float("inf")),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("top_p", float("nan")),
        ("top_k", -1),
        ("top_k", 100_001),
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", 10.5),
        ("seed", -1),
        ("seed", 2**63),
        ("stop", [""]),
        ("stop", ["x" * 129]),
    ],
    ids=lambda v: repr(v),
)
def test_out_of_range_option_is_invalid_field(field: str, value: Any) -> None:
    """A sampling option outside its range is refused as invalid_field, in configure and turn options."""
    assert decode_error(pack({"type": "configure", field: value})).code is ErrorCode.INVALID_FIELD
    turn = {"type": "turn", "id": "t", "options": {field: value}}
    assert decode_error(pack(turn)).code is ErrorCode.INVALID_FIELD


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", 5.0), ("temperature", 0), ("top_p", 1.0), ("top_k", 0), ("max_tokens", 1), ("seed", 2**63 - 1)],
)
def test_boundary_option_values_are_accepted(field: str, value: Any) -> None:
    """Values on the inclusive edge of each range decode fine."""
    frame = protocol.decode(pack({"type": "configure", field: value}))
    assert getattr(frame, field) == value


@pytest.mark.parametrize("frame_id", ["", "x" * 65], ids=["empty", "65-chars"])
@pytest.mark.parametrize("frame_type", ["turn", "cancel", "ping"])
def test_bad_id_length_is_invalid_field(frame_type: str, frame_id: str) -> None:
    """An empty id or one longer than 64 characters is refused as invalid_field."""
    assert decode_error(pack({"type": frame_type, "id": frame_id})).code is ErrorCode.INVALID_FIELD


def test_id_of_64_characters_is_accepted() -> None:
    """An id of exactly 64 characters is accepted."""
    assert protocol.decode(pack({"type": "cancel", "id": "x" * 64})) == CancelFrame(id="x" * 64)


def test_system_prompt_over_limit_is_invalid_field() -> None:
    """A configure system prompt longer than 32,000 characters is refused as invalid_field."""
    assert decode_error(pack({"type": "configure", "system": "x" * 32_001})).code is ErrorCode.INVALID_FIELD


def test_invalid_base64_image_in_json_is_invalid_field() -> None:
    """A JSON image that is not valid base64 is refused as invalid_field, with the turn id."""
    error = decode_error('{"type": "turn", "id": "t9", "images": ["!!!"]}')
    assert (error.code, error.frame_id) == (ErrorCode.INVALID_FIELD, "t9")


def test_invalid_field_echoes_the_id() -> None:
    """An invalid_field error carries the frame's string id."""
    error = decode_error(pack({"type": "turn", "id": "t3", "text": 5}))
    assert (error.code, error.frame_id) == (ErrorCode.INVALID_FIELD, "t3")


# ---- property: nothing but GatewayError escapes ------------------------------------------------

_FIELD_NAMES = [
    "type",
    "id",
    "text",
    "images",
    "options",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "repetition_penalty",
    "stop",
    "seed",
    "include_images",
    "extra",
]

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.sampled_from(CLIENT_TYPES)
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(_FIELD_NAMES) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)
# Frame-shaped maps with a real type, so the property also reaches field validation.
_frames = st.builds(
    lambda frame_type, fields: {**fields, "type": frame_type},
    st.sampled_from(CLIENT_TYPES),
    st.dictionaries(st.sampled_from(_FIELD_NAMES[1:]), _values, max_size=5),
)


def _decode_or_gateway_error(data: bytes | str) -> None:
    try:
        frame = protocol.decode(data)
    except GatewayError as error:
        assert isinstance(error.code, ErrorCode)
        return
    assert frame.__struct_config__.tag in CLIENT_TYPES


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_gateway_error(data: bytes) -> None:
    """Any bytes either decode to a client frame or raise GatewayError, nothing else."""
    _decode_or_gateway_error(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_arbitrary_text_only_raises_gateway_error(text: str) -> None:
    """Any text either decodes to a client frame or raises GatewayError, nothing else."""
    _decode_or_gateway_error(text)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(_values | _frames)
def test_arbitrary_msgpack_objects_only_raise_gateway_error(value: Any) -> None:
    """Any msgpack-encodable object either decodes to a client frame or raises GatewayError."""
    _decode_or_gateway_error(pack(value))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(_values | _frames)
def test_arbitrary_json_objects_only_raise_gateway_error(value: Any) -> None:
    """Any JSON document either decodes to a client frame or raises GatewayError."""
    _decode_or_gateway_error(json.dumps(_jsonable(value)))


def test_msgpack_images_must_be_bin_not_base64_text() -> None:
    """In msgpack an attachment is `bin`; a base64 string (JSON's encoding) is a mistyped field."""
    with pytest.raises(GatewayError) as caught:
        protocol.decode(msgpack.packb({"type": "turn", "id": "t", "images": ["eHg="]}))
    assert caught.value.code is ErrorCode.INVALID_FIELD
