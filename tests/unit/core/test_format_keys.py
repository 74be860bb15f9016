"""Response formats' keys: canonical, computed in slices, stopped at the size bound, and remembered."""

from __future__ import annotations

from typing import Any

from gateway.core import request as req
from gateway.core.format_keys import SLICE_VALUES, finish, format_key, format_key_sliced, format_key_steps, remembered


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
