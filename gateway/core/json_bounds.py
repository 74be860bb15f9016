"""Bounds on free-form client JSON (schemas, tool parameters): nesting depth, integer range, finite numbers."""

from __future__ import annotations

import math
from typing import Any

import msgspec

from gateway.errors import ErrorCode, GatewayError

# Free-form JSON a client sends (a response_format schema, tool parameters) is held to these bounds:
# deep enough for any real schema, shallow enough that no recursive encoder, template or grammar compiler
# downstream runs out of stack; integers are those msgpack, the session store and the grammar compiler
# carry (64 bits), and numbers are finite. PROTOCOL.md (structured output) states them.
MAX_JSON_DEPTH = 64
JSON_INT_MIN, JSON_INT_MAX = -(2**63), 2**64 - 1


def check_json_value(value: Any, field: str) -> None:
    """Refuse (`invalid_field`, naming `field`) a value nested deeper than MAX_JSON_DEPTH or holding an
    integer outside 64 bits or a non-finite number. Iterative, so a hostile depth cannot exhaust the
    stack. It runs on the event loop over up to a frame's megabytes, so no Python code touches each
    scalar: a container's child types are gathered as a set, the floats (rare in schemas) are checked by
    C loops, and the integers by msgspec's msgpack encoder, whose range is exactly 64 bits."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, (dict, list)) else []
    _check_floats([value], {type(value)}, field)
    while stack:
        container, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} nests deeper than {MAX_JSON_DEPTH} levels")
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
