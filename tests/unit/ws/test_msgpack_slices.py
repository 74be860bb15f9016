"""msgpack frames decoded a slice at a time: the same frames and refusals as one pass, in bounded steps."""

from __future__ import annotations

import sys
from typing import Any

import msgpack
import pytest

from gateway.core.json_bounds import MAX_JSON_VALUES, check_json_value
from gateway.errors import ErrorCode, GatewayError
from gateway.ws import protocol as p
from gateway.ws.msgpack_slices import _CALL_COST, MAX_FRAME_VALUES, SLICE_BYTES, finish, unpack_steps


def schema_turn(schema: Any) -> bytes:
    response_format = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    return bytes(msgpack.packb({"type": "turn", "id": "t", "options": {"response_format": response_format}}))


def steps_of(data: bytes) -> int:
    """How many times decoding `data` yields to the caller before it ends (with a frame or a refusal)."""
    steps, count = p.decode_steps(data), 0
    try:
        while True:
            next(steps)
            count += 1
    except (StopIteration, GatewayError):
        return count


def test_a_value_unpacks_the_same_whatever_the_slice() -> None:
    """Fed a few bytes at a time, the unpacker keeps its place: the value is the one unpackb reads."""
    value = {"type": "turn", "id": "t", "images": [b"\x00" * 100, b"\x01" * 50], "text": "é" * 40}
    data = msgpack.packb(value)
    for size in (1, 3, 64, len(data)):
        assert finish(unpack_steps(data, size)) == value


def test_a_big_frame_yields_once_a_slice_and_a_small_one_never() -> None:
    """A frame of megabytes of small values is decoded in SLICE_BYTES steps; a ping in one."""
    big = schema_turn({"enum": [[[7] * 1024] * 64] * 5})
    assert steps_of(big) >= len(big) // SLICE_BYTES and steps_of(bytes(msgpack.packb({"type": "ping"}))) == 0


@pytest.mark.parametrize(
    "data",
    [b"", msgpack.packb({"type": "ping"})[:-1], msgpack.packb({"type": "ping"}) + b"\x00", b"\x91" * 10_000 + b"\xc0"],
    ids=["empty", "cut-short", "trailing-byte", "deep"],
)
def test_what_does_not_unpack_is_refused_after_any_slice(data: bytes) -> None:
    """Cut short, followed by more, or nested past msgpack's reach: `bad_frame`, sliced or not."""
    with pytest.raises(GatewayError) as refused:
        p.decode(data)
    assert refused.value.code is ErrorCode.BAD_FRAME


def test_trailing_bytes_past_a_slice_boundary_are_refused() -> None:
    """A frame that ends at a slice's end, with more bytes in the next slice, is `bad_frame`."""
    frame = msgpack.packb({"type": "turn", "id": "t", "text": "x" * (SLICE_BYTES - 20)})
    frame += b"\x00" * (SLICE_BYTES * 2 - len(frame) + 5)
    with pytest.raises(GatewayError) as refused:
        p.decode(frame)
    assert refused.value.code is ErrorCode.BAD_FRAME


def test_free_json_of_more_than_max_json_values_entries_is_invalid_field() -> None:
    """A schema of more entries than MAX_JSON_VALUES is `invalid_field` naming the field, echoing the id;
    one of exactly that many is read."""
    rows = MAX_JSON_VALUES // 1024
    exact: dict[str, Any] = {"enum": [[0] * 1023] * (rows - 1) + [[0] * 1022]}  # + the rows and `enum` itself
    check_json_value(exact, "schema")
    exact["enum"][-1] = [0] * 1023
    with pytest.raises(p.FrameError) as refused:
        p.decode(schema_turn(exact))
    assert refused.value.code is ErrorCode.INVALID_FIELD and refused.value.frame_id == "t"
    assert f"holds more than {MAX_JSON_VALUES} values" in refused.value.message


def test_a_frame_of_more_than_max_frame_values_is_too_wide_before_it_is_all_built() -> None:
    """Arrays, maps and entries past MAX_FRAME_VALUES: `bad_frame` (too wide), refused within the slices
    holding the first MAX_FRAME_VALUES, however many more follow."""
    rows = MAX_FRAME_VALUES // 1025 + 1  # each row: itself and 1,024 entries
    data = schema_turn({"enum": [[[0] * 1024] * 1024] * (rows // 1024 + 1) + [[[0] * 1024] * 1024] * 14})
    with pytest.raises(GatewayError, match=f"more than {MAX_FRAME_VALUES} arrays, maps and entries") as refused:
        p.decode(data)
    assert refused.value.code is ErrorCode.BAD_FRAME
    # Each row is a piece: its bytes and the cost of a value looked at on its own count towards a slice.
    assert steps_of(data) <= ((MAX_FRAME_VALUES + 2 * 1025) * 1.01 + (rows + 2) * _CALL_COST) // SLICE_BYTES + 1


def fresh(name: str) -> str:
    """An equal string that is a new object: `sys.intern(fresh(k)) is k` only if decoding interned `k`."""
    return "".join(list(name))


@pytest.mark.parametrize("slice_bytes", [SLICE_BYTES, 64], ids=["one-piece", "split"])
def test_decoding_interns_no_map_key(slice_bytes: int) -> None:
    """msgpack-python interns every str map key into the interpreter's one table, whose resize took 30 ms
    of one loop callback for a schema of 250,000 new property names: no key decoded here is interned."""
    keys = [f"never-seen-{slice_bytes}-{i}" for i in range(200)]
    value = finish(unpack_steps(bytes(msgpack.packb({"schema": {key: {"type": "integer"} for key in keys}})), slice_bytes))
    decoded = list(value["schema"])
    assert decoded == keys and not any(sys.intern(fresh(key)) is key for key in decoded)


BEYOND_BOUNDS = [
    pytest.param({"a": [0] * 1025}, "1025 exceeds max_", id="array-of-1025"),
    pytest.param({"a": {str(i): 0 for i in range(1025)}}, "1025 exceeds max_", id="map-of-1025"),
    pytest.param({"a": {1: 2}}, "int is not allowed for map key", id="integer-key"),
    pytest.param({"a": [msgpack.ExtType(1, b"ab")]}, "exceeds max_ext_len", id="extension"),
    pytest.param({"a": msgpack.Timestamp(1_700_000_000)}, "exceeds max_ext_len", id="timestamp"),
]


@pytest.mark.parametrize("slice_bytes", [SLICE_BYTES, 1], ids=["one-piece", "split"])
@pytest.mark.parametrize(("value", "says"), BEYOND_BOUNDS)
def test_the_bounds_hold_whether_a_value_is_one_piece_or_split(value: Any, says: str, slice_bytes: int) -> None:
    """A container of more than 1,024 entries, a map key neither str nor bytes, an extension type: refused
    as msgpack's own decoder refused them, in a piece or across pieces."""
    data = bytes(msgpack.packb({"pad": "x" * 10, **value}))
    with pytest.raises(ValueError, match=says):
        finish(unpack_steps(data, slice_bytes))


def test_nesting_msgspec_will_not_read_is_read_as_msgpack_reads_it() -> None:
    """A piece nested 900 levels deep (past msgspec's recursion guard, within msgpack's 1,000) decodes:
    the protocol then refuses it as `invalid_field` with the frame's id, not as an unreadable frame."""
    data = b"\x81\xa1a" + b"\x91" * 899 + b"\x90"
    value = finish(unpack_steps(data))
    depth = 0
    inner = value["a"]
    while inner:
        inner, depth = inner[0], depth + 1
    assert depth == 899


def test_values_looked_at_one_by_one_count_towards_a_slice_however_small() -> None:
    """A chain of arrays, each of 1,023 one-byte values and the next (every level bigger than a slice, so each value
    is decoded on its own): no slice looks at more than 256 of them (SLICE_BYTES over a value's cost, 512; one slice
    took 111 ms when only bytes counted, 8 slices in all), so the 100 levels' 102,300 values take at least 399."""
    value: Any = "x" * 200_000
    for _ in range(100):
        value = [0] * 1023 + [value]
    data = bytes(msgpack.packb({"type": "turn", "id": "t", "text": value}))
    steps = unpack_steps(data)
    count = 0
    with pytest.raises(StopIteration):
        while True:
            next(steps)
            count += 1
    assert _CALL_COST == 512 and count >= 102_300 // (SLICE_BYTES // 512)
