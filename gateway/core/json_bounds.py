"""Bounds on free-form client JSON (schemas, tool parameters): nesting depth, integer range, finite numbers."""

from __future__ import annotations

import math
from typing import Any

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
    stack; only containers are stacked, as this runs on every schema a client sends."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, (dict, list)) else []
    _check_scalar(value, field)
    while stack:
        container, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} nests deeper than {MAX_JSON_DEPTH} levels")
        for child in container.values() if isinstance(container, dict) else container:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            else:
                _check_scalar(child, field)


def _check_scalar(item: Any, field: str) -> None:
    kind = type(item)  # exact types: a bool is an int subclass, and always fine
    if kind is int and not JSON_INT_MIN <= item <= JSON_INT_MAX:
        raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} holds an integer outside the 64-bit range")
    if kind is float and not math.isfinite(item):
        raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} holds a number that is not finite")
