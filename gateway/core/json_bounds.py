"""Bounds on free-form client JSON (schemas, tool parameters): nesting depth, integer range, finite numbers."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import msgspec

from gateway.errors import ErrorCode, GatewayError

# Free-form JSON a client sends (a response_format schema, tool parameters) is held to these bounds:
# deep enough for any real schema, shallow enough that no recursive encoder, template or grammar compiler
# downstream runs out of stack; integers are those msgpack, the session store and the grammar compiler
# carry (64 bits), and numbers are finite. PROTOCOL.md (structured output) states them.
MAX_JSON_DEPTH = 64
JSON_INT_MIN, JSON_INT_MAX = -(2**63), 2**64 - 1
# Entries (list items and map values, at every level). Each takes 2 bytes of JSON or more (itself and a
# comma), so no schema within max_grammar_bytes (1 MiB) holds more; a msgpack frame of 1-byte values
# could hold 16 million, each a Python object that every later pass (the schema's hash, 30 ms for this
# many) walks on the event loop.
MAX_JSON_VALUES = 512 * 1024
_STEP_VALUES = 64 * 1024  # entries looked at between two yields of json_value_checks: a few ms


def check_json_value(value: Any, field: str) -> None:
    """Refuse (`invalid_field`, naming `field`) a value nested deeper than MAX_JSON_DEPTH, holding more
    than MAX_JSON_VALUES entries, an integer outside 64 bits or a non-finite number."""
    for _ in json_value_checks(value, field):
        pass


def json_value_checks(value: Any, field: str) -> Iterator[None]:
    """check_json_value, yielding after each _STEP_VALUES entries, so an event loop can serve others in
    between. Iterative, so a hostile depth cannot exhaust the stack. No Python code touches each scalar:
    a container's child types are gathered as a set, the floats (rare in schemas) are checked by C loops,
    and the integers by msgspec's msgpack encoder, whose range is exactly 64 bits."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, (dict, list)) else []
    _check_floats([value], {type(value)}, field)
    seen, next_step = 0, _STEP_VALUES
    while stack:
        container, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} nests deeper than {MAX_JSON_DEPTH} levels")
        seen += len(container)
        if seen > MAX_JSON_VALUES:
            raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} holds more than {MAX_JSON_VALUES} values")
        if seen >= next_step:
            next_step = seen + _STEP_VALUES
            yield
        children = list(container.values()) if isinstance(container, dict) else container
        kinds = set(map(type, children))
        _check_floats(children, kinds, field)
        if dict in kinds or list in kinds:
            stack.extend((child, depth + 1) for child in children if type(child) in _CONTAINERS)
    try:
        msgspec.msgpack.encode(value)  # only shallow values get here
    except OverflowError:
        raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} holds an integer outside the 64-bit range") from None


_CONTAINERS = (dict, list)


def _check_floats(items: list[Any], kinds: set[type], field: str) -> None:
    if float in kinds and not all(map(math.isfinite, filter(float.__instancecheck__, items))):
        raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} holds a number that is not finite")
