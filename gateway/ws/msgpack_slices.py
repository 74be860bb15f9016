"""msgpack decoded a piece at a time, under the protocol's bounds on containers, map keys and extension types."""

from __future__ import annotations

import datetime
from collections.abc import Generator
from itertools import chain
from typing import Any

import msgpack
import msgspec

from gateway.core.json_bounds import level_entries

MAX_CONTAINER_LEN = 1024  # entries in one msgpack array or map

# Decoding builds a Python object per value: a 16 MiB frame of small values took 300 ms in one event-loop
# callback. So a value bigger than this is split into its entries (found by msgpack's `skip`, which builds
# nothing), each decoded by msgspec as one piece of at most this many bytes, and the caller runs other
# clients' work between pieces: about 3 ms a piece (a 500k-value schema decodes at about 20 ms a MB).
SLICE_BYTES = 128 * 1024
# Bytes looked over by `skip` count this much less than bytes decoded towards a slice's work: about 40x
# cheaper, as it builds no objects (6 MB in 4 ms).
_SKIP_DISCOUNT = 16
# Each value looked at on its own (found, decoded, checked: about 6 us) counts as this many bytes towards a slice's
# work, however few it holds: a chain of arrays each holding 1,023 one-byte values and the next array (every level
# bigger than a slice, so each of its values is a piece) took 111 ms of one slice when only bytes counted.
_CALL_COST = 512
# Arrays and maps with their entries, all levels together: as many as a JSON frame at max_json_frame_bytes
# (2 MiB) can hold. Counted as each piece is decoded, so a frame of 16 million 1-byte values is refused
# after building a million of them and one piece more, not all (300 ms of CPU, and a heap the garbage
# collector then walks).
MAX_FRAME_VALUES = 1024 * 1024
# Levels of values bigger than a slice, one inside another, that are split; a piece nests as deep as
# msgspec reads (RecursionError past Python's limit). No frame the protocol takes comes near either.
MAX_SPLIT_DEPTH = 128

# msgpack-python's own decoder interns every str map key (PyUnicode_InternInPlace): a schema of 250,000
# distinct property names grew the interpreter's one table of interned strings, whose resize (an O(size)
# rebuild) took 30 ms of one callback, and every later frame of new keys grew it again. msgspec interns
# none, so it decodes; msgpack only finds where values end.


class TooManyValues(ValueError):
    """A msgpack value holding more than MAX_FRAME_VALUES arrays, maps and entries."""


class _Work:
    """Bytes decoded (and skipped, discounted) since the caller last ran other work."""

    def __init__(self, slice_bytes: int) -> None:
        self.slice_bytes = slice_bytes
        self.done = 0
        self.values = 0

    def due(self, more: int) -> bool:
        """Whether to yield before `more` bytes of work: some was done, and `more` would pass the slice."""
        if self.done and self.done + more > self.slice_bytes:
            self.done = 0
            return True
        return False

    def count(self, values: int) -> None:
        self.values += values
        if self.values > MAX_FRAME_VALUES:
            raise TooManyValues(f"more than {MAX_FRAME_VALUES} arrays, maps and entries")


def unpack_steps(data: bytes, slice_bytes: int = SLICE_BYTES) -> Generator[None, None, Any]:
    """Decode the one msgpack value `data` holds, yielding between pieces of about `slice_bytes`; raises as
    `msgpack.unpackb` would with the protocol's bounds (ExtraData for bytes after the value, ValueError for
    a value cut short, a container over MAX_CONTAINER_LEN, a map key not str or bytes or an extension type,
    StackError past the nesting msgpack reads), or TooManyValues."""
    view, work = memoryview(data), _Work(max(1, slice_bytes))
    if len(data) <= work.slice_bytes:  # most frames: one piece (msgspec refuses bytes after it, or too few)
        value = _piece(view)
        _check_piece(value, work)
        return value
    value, end = yield from _decode(view, 0, work, 0)
    if end != len(data):
        raise msgpack.ExtraData(value, b"")
    return value


def _decode(view: memoryview, at: int, work: _Work, depth: int) -> Generator[None, None, tuple[Any, int]]:
    """The value starting at `at`, and where it ends: one piece if it fits a slice, else its entries."""
    if at >= len(view):
        raise ValueError("incomplete input")
    work.done += _CALL_COST
    end = _end(view, at, work.slice_bytes, work)
    header = _container_header(view[at:]) if end is None else None
    if header is None:  # fits a slice, or one str or bin however big (a single copy): a piece
        end = end if end is not None else _end(view, at, None, work)
        assert end is not None  # without a limit, _end finds the end or raises
        if work.due(end - at):
            yield
        value = _piece(view[at:end])
        work.done += end - at
        _check_piece(value, work)
        return value, end
    if depth >= MAX_SPLIT_DEPTH:
        raise msgpack.StackError(f"values bigger than a slice nest deeper than {MAX_SPLIT_DEPTH}")
    is_map, entries, start = header
    if entries > MAX_CONTAINER_LEN:
        raise ValueError(f"{entries} exceeds max_{'map' if is_map else 'array'}_len({MAX_CONTAINER_LEN})")
    work.count(1 + entries)
    parts: list[Any] = []
    at += start
    for _ in range(entries * 2 if is_map else entries):
        part, at = yield from _decode(view, at, work, depth + 1)
        parts.append(part)
    if not is_map:
        return parts, at
    keys = parts[0::2]
    _check_keys({type(key) for key in keys})
    return dict(zip(keys, parts[1::2], strict=True)), at


def _piece(data: memoryview) -> Any:
    try:
        return msgspec.msgpack.decode(data)
    except RecursionError:
        # msgspec stops at Python's recursion limit, below the 1,000 levels msgpack reads (the protocol
        # refuses deep free-form JSON as `invalid_field`, echoing the frame's id, once the frame is read):
        # a piece that deep is read by msgpack, interning at most a piece's keys.
        return msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0)


_FIRST_LOOK = 512  # bytes fed to `skip` first: most values are small; then 8 times more each time


def _end(view: memoryview, at: int, limit: int | None, work: _Work) -> int | None:
    """Where the value at `at` ends, if within `limit` bytes (any, for None), found by msgpack's `skip`
    (which builds nothing) over as few bytes as it needs; None past the limit; ValueError if cut short.
    The bytes it looked over count towards `work`."""
    stop = len(view) if limit is None else min(len(view), at + limit)
    skipper = msgpack.Unpacker(max_buffer_size=max(1, stop - at))
    fed, size = at, _FIRST_LOOK
    while fed < stop:
        skipper.feed(view[fed : min(stop, at + size)])
        fed, size = min(stop, at + size), size * 8
        try:
            skipper.skip()
        except msgpack.OutOfData:
            continue
        work.done += int(skipper.tell()) // _SKIP_DISCOUNT
        return at + int(skipper.tell())
    work.done += (stop - at) // _SKIP_DISCOUNT
    if stop == len(view):
        raise ValueError("incomplete input")
    return None


def _container_header(view: memoryview) -> tuple[bool, int, int] | None:
    """(a map?, its entries, where they start) when `view` opens with an array or a map, else None."""
    first = view[0]
    if 0x80 <= first <= 0x9F:
        return first < 0x90, first & 0x0F, 1
    if first in (0xDC, 0xDE) and len(view) >= 3:
        return first == 0xDE, int.from_bytes(view[1:3], "big"), 3
    if first in (0xDD, 0xDF) and len(view) >= 5:
        return first == 0xDF, int.from_bytes(view[1:5], "big"), 5
    return None


_MAP_KEYS = {str, bytes}
_CONTAINERS = (dict, list)
_EXTENSIONS = {msgspec.msgpack.Ext, datetime.datetime}  # how msgspec reads extension types and timestamps
_NO_EXTENSIONS = "an extension type exceeds max_ext_len(0)"  # as msgpack words it


def _check_piece(value: Any, work: _Work) -> None:
    """The bounds msgpack-python held while decoding, held on a decoded piece a level at a time by C loops
    over each level (no Python code runs per value): container lengths, map keys, no extension types; its
    values counted."""
    if type(value) in _EXTENSIONS:
        raise ValueError(_NO_EXTENSIONS)
    level: list[Any] = [value] if type(value) in _CONTAINERS else []
    while level:
        lengths = list(map(len, level))
        work.count(len(level) + sum(lengths))
        if max(lengths) > MAX_CONTAINER_LEN:
            raise ValueError(f"{max(lengths)} exceeds max_array_len or max_map_len({MAX_CONTAINER_LEN})")
        _check_keys(set(map(type, chain.from_iterable(filter(dict.__instancecheck__, level)))))
        entries = level_entries(level)
        kinds = set(map(type, entries))
        if kinds & _EXTENSIONS:
            raise ValueError(_NO_EXTENSIONS)
        level = [*filter(dict.__instancecheck__, entries), *filter(list.__instancecheck__, entries)]


def _check_keys(kinds: set[type]) -> None:
    for kind in kinds - _MAP_KEYS:
        raise ValueError(f"{kind.__name__} is not allowed for map key when strict_map_key=True")


def finish(steps: Generator[None, None, Any]) -> Any:
    """Run `steps` to its end at once, and return what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
