"""Bounds on free-form client JSON (schemas, tool parameters): nesting depth, integer range, finite numbers."""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Iterator
from itertools import accumulate, chain
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
    between. A level of nesting at a time (so a hostile depth cannot exhaust the stack), in batches of
    containers: no Python code runs per container or per scalar, only C loops over a batch's entries (its
    types as a set, its numbers' range). One container at a time took 12-18 ms of the loop's CPU for a
    9,000-property schema (9,000 one-entry objects); once, the whole value went through msgspec's encoder
    at the end: 35-90 ms of one callback."""
    _check_numbers([value], {type(value)}, field)
    level: list[Any] = [value] if isinstance(value, (dict, list)) else []
    depth, seen = 1, 0
    while level:
        if depth > MAX_JSON_DEPTH:
            raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} nests deeper than {MAX_JSON_DEPTH} levels")
        below: list[Any] = []
        for batch in _batches(level):
            seen += sum(map(len, batch))
            if seen > MAX_JSON_VALUES:  # before its entries are gathered
                raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} holds more than {MAX_JSON_VALUES} values")
            entries = level_entries(batch)
            kinds = set(map(type, entries))
            _check_numbers(entries, kinds, field)
            if dict in kinds or list in kinds:
                below += [entry for entry in entries if type(entry) in _CONTAINERS]
            yield
        level, depth = below, depth + 1


def _batches(level: list[Any]) -> Iterator[list[Any]]:
    """`level`'s containers in runs of about _STEP_VALUES entries (a container counts as an entry, however
    few it holds; one bigger than that is a run of its own), cut where the running count passes each step.
    Each run is measured from a window of at most _STEP_VALUES containers (no run holds more, as each counts
    one at least), so no step's work grows with the level: the level of a 500k-value schema holds 250,000
    maps, and counting them all at once took 30-60 ms of one loop callback."""
    start = 0
    while start < len(level):
        window = level[start : start + _STEP_VALUES]
        # Entries up to and including each container, the container itself counted: C loops only.
        work = list(map(operator.add, accumulate(map(len, window)), range(1, len(window) + 1)))
        end = start + min(bisect.bisect_left(work, _STEP_VALUES) + 1, len(window))
        yield level[start:end]
        start = end


def level_entries(level: list[Any]) -> list[Any]:
    """Every entry of the containers in `level` (maps' values, lists' items), gathered by C loops only."""
    maps = filter(dict.__instancecheck__, level)  # decoders build exact dicts and lists only
    return list(chain(chain.from_iterable(map(dict.values, maps)), *filter(list.__instancecheck__, level)))


_CONTAINERS = (dict, list)


def _check_numbers(items: list[Any], kinds: set[type], field: str) -> None:
    if float in kinds and not all(map(math.isfinite, filter(float.__instancecheck__, items))):
        raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} holds a number that is not finite")
    if int in kinds:  # what msgpack, the store and the grammar compiler carry: 64 bits
        integers = list(filter(int.__instancecheck__, items))
        if min(integers) < JSON_INT_MIN or max(integers) > JSON_INT_MAX:
            raise GatewayError(ErrorCode.INVALID_FIELD, f"{field} holds an integer outside the 64-bit range")
