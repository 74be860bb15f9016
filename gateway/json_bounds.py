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
    integer outside 64 bits or a non-finite number. Iterative: a hostile depth cannot exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            _check_json_scalar(item, field)
            continue
        if depth > MAX_JSON_DEPTH:
            raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} nests deeper than {MAX_JSON_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def _check_json_scalar(item: Any, field: str) -> None:
    if isinstance(item, bool):
        return
    if isinstance(item, int) and not JSON_INT_MIN <= item <= JSON_INT_MAX:
        raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} holds an integer outside the 64-bit range")
    if isinstance(item, float) and not math.isfinite(item):
        raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} holds a number that is not finite")
