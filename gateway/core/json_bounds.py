"""Bounds on free-form client JSON (schemas, tool parameters): nesting depth, integer range, finite numbers."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

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
# Entries looked at between two yields of json_value_checks: a few ms. (At 64k, a schema of 250 maps of
# 1,000 properties took 130 ms of one loop callback on a busy 2-core machine.)
_STEP_VALUES = 8 * 1024


def check_json_value(value: Any, field: str) -> None:
    """Refuse (`invalid_field`, naming `field`) a value nested deeper than MAX_JSON_DEPTH, holding more
    than MAX_JSON_VALUES entries, an integer outside 64 bits or a non-finite number."""
    for _ in json_value_checks(value, field):
        pass


def json_value_checks(value: Any, field: str) -> Iterator[None]:
    """check_json_value, yielding after each _STEP_VALUES entries, so an event loop can serve others in
    between. Iterative, so a hostile depth cannot exhaust the stack. No Python code touches each scalar:
    a container's child types are gathered as a set, and its floats and integers are checked by C loops
    (once, the whole value went through msgspec's encoder at the end: 35-90 ms of one callback)."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, (dict, list)) else []
    _check_numbers([value], {type(value)}, field)
    seen, work, next_step = 0, 0, _STEP_VALUES
    while stack:
        container, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} nests deeper than {MAX_JSON_DEPTH} levels")
        seen += len(container)
        work += len(container) + 1  # a container costs as much as an entry, however few it holds
        if seen > MAX_JSON_VALUES:
            raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} holds more than {MAX_JSON_VALUES} values")
        if work >= next_step:
            next_step = work + _STEP_VALUES
            yield
        children = list(container.values()) if isinstance(container, dict) else container
        kinds = set(map(type, children))
        _check_numbers(children, kinds, field)
        if dict in kinds or list in kinds:
            stack.extend((child, depth + 1) for child in children if type(child) in _CONTAINERS)


_CONTAINERS = (dict, list)


def _check_numbers(items: list[Any], kinds: set[type], field: str) -> None:
    if float in kinds and not all(map(math.isfinite, filter(float.__instancecheck__, items))):
        raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} holds a number that is not finite")
    if int in kinds:  # what msgpack, the store and the grammar compiler carry: 64 bits
        integers = list(filter(int.__instancecheck__, items))
        if min(integers) < JSON_INT_MIN or max(integers) > JSON_INT_MAX:
            raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} holds an integer outside the 64-bit range")
