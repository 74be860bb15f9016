"""Response formats' keys: canonical, computed in slices, stopped at the size bound, and remembered."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.core import request as req
from gateway.core.format_keys import (
    ENCODE_VALUES,
    SLICE_VALUES,
    finish,
    format_key,
    format_key_sliced,
    format_key_steps,
    remembered,
)


def schema_format(schema: dict[str, Any]) -> req.JsonSchemaFormat:
    return req.JsonSchemaFormat(json_schema=req.JsonSchemaSpec(name="s", schema=schema))


def properties(count: int) -> dict[str, Any]:
    return {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(count)}}


def slices(response_format: req.ResponseFormat, limit: int | None = None) -> int:
    """How many times the key's steps yield to the caller."""
    steps, count = format_key_steps(response_format, limit), 0
    try:
        while True:
            next(steps)
            count += 1
    except StopIteration:
        return count


def test_the_key_ignores_the_order_of_object_keys() -> None:
    """The same schema with its keys in another order has the same key and size; another schema has another."""
    schema = properties(3000)
    reordered = {"properties": dict(reversed(list(schema["properties"].items()))), "type": "object"}
    assert format_key(schema_format(schema)) == format_key(schema_format(reordered))
    assert format_key(schema_format(schema))[0] != format_key(schema_format(properties(3001)))[0]


def test_the_size_is_that_of_the_compact_json() -> None:
    """Without a limit, the size counts the whole schema's JSON: a longer schema is larger."""
    small, large = format_key(schema_format(properties(10))), format_key(schema_format(properties(20_000)))
    assert large[1] > 20_000 * len('"p0":{"type":"integer"}') > small[1]


def test_a_large_schema_is_walked_in_slices() -> None:
    """20,000 properties yield to the caller many times, at least once per SLICE_VALUES properties."""
    assert slices(schema_format(properties(20_000))) >= 20_000 // SLICE_VALUES


def test_a_schema_past_the_limit_is_not_walked() -> None:
    """A schema whose properties alone pass the limit stops at once, its size reported over the limit."""
    response_format = schema_format(properties(500_000))
    assert slices(response_format, limit=1 << 20) <= 1
    assert finish(format_key_steps(response_format, limit=1 << 20))[1] > 1 << 20
    assert remembered(response_format) is None


async def test_the_loop_s_key_is_remembered_for_the_turn() -> None:
    """The key the loop computed for a format is the one a later look-up of that same object finds."""
    response_format = schema_format(properties(5000))
    key = await format_key_sliced(response_format, limit=1 << 20)
    assert remembered(response_format) == key == finish(format_key_steps(schema_format(properties(5000))))


def grouped(groups: int, each: int) -> dict[str, Any]:
    """The attack's shape: `groups` objects of `each` required integer properties."""
    inner = {f"g{g}": properties(each) | {"required": [f"p{i}" for i in range(each)]} for g in range(groups)}
    return {"type": "object", "properties": inner, "required": list(inner)}


def test_small_objects_are_encoded_whole_not_a_value_at_a_time(monkeypatch: Any) -> None:
    """9 groups of 1,000 properties (36k values) take a few dozen encodes, not one per property, and the key
    is still canonical: the same schema with every object's keys reversed has the same key and size."""
    encodes = 0
    encode = msgspec.json.encode

    def counted(value: Any, **options: Any) -> bytes:
        nonlocal encodes
        encodes += 1
        return encode(value, **options)

    monkeypatch.setattr(msgspec.json, "encode", counted)
    key = format_key(schema_format(grouped(9, 1000)))
    assert encodes <= 40
    monkeypatch.undo()
    assert format_key(schema_format(reversed_keys(grouped(9, 1000)))) == key


def test_a_wide_object_of_small_values_keeps_a_canonical_key() -> None:
    """An object of 40,000 small properties, past ENCODE_VALUES so walked and encoded a run of entries at a
    time: its key and size are those of the same properties in the reverse order."""
    schema = properties(40_000)
    assert 2 * 40_000 > ENCODE_VALUES
    assert format_key(schema_format(schema)) == format_key(schema_format(reversed_keys(schema)))


def reversed_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {name: reversed_keys(item) for name, item in reversed(list(value.items()))}
    return [reversed_keys(item) for item in value] if isinstance(value, list) else value
