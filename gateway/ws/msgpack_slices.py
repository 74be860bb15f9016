"""msgpack unpacked a slice at a time, under the protocol's bounds on containers, strings and extension types."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import msgpack

MAX_CONTAINER_LEN = 1024  # entries in one msgpack array or map

# Unpacking builds a Python object per value: about 20 ms a MB for 1-byte values, so a 16 MiB frame took
# 300 ms in one event-loop callback; maps of maps with short keys (a 500k-value schema) cost about 90 ms a MB.
# Fed this much at a time, msgpack's Unpacker keeps its place between slices, and the caller runs other
# clients' work in between (about 12 ms a slice at worst; 256 KiB slices took 22 ms, which with a garbage
# collection in the same callback came within a few ms of test_frame_drop's 50 ms bound).
SLICE_BYTES = 128 * 1024
# Arrays and maps with their entries, all levels together: as many as a JSON frame at max_json_frame_bytes
# (2 MiB) can hold. Counted as each container completes, so a frame of 16 million 1-byte values is refused
# after building a million of them, not all (300 ms of CPU, and a heap the garbage collector then walks).
MAX_FRAME_VALUES = 1024 * 1024


class TooManyValues(ValueError):
    """A msgpack value holding more than MAX_FRAME_VALUES arrays, maps and entries."""


def unpack_steps(data: bytes, slice_bytes: int = SLICE_BYTES) -> Generator[None, None, Any]:
    """Unpack the one msgpack value `data` holds, `slice_bytes` at a time, yielding between slices; raises
    as `msgpack.unpackb` would with the same bounds (ExtraData for bytes after the value, ValueError for a
    value cut short or a bound exceeded, StackError past the nesting msgpack reads), or TooManyValues."""
    counted = _Count()
    unpacker = msgpack.Unpacker(
        list_hook=counted,
        object_hook=counted,
        raw=False,
        strict_map_key=True,
        max_buffer_size=max(1, len(data)),
        max_bin_len=len(data),
        max_str_len=len(data),
        max_array_len=MAX_CONTAINER_LEN,
        max_map_len=MAX_CONTAINER_LEN,
        max_ext_len=0,
    )
    view = memoryview(data)
    for at in range(0, len(data), slice_bytes):
        if at:
            yield
        unpacker.feed(view[at : at + slice_bytes])
        try:
            value = unpacker.unpack()
        except msgpack.OutOfData:
            continue
        if unpacker.tell() != len(data):
            raise msgpack.ExtraData(value, b"")
        return value
    raise ValueError("incomplete input")


class _Count:
    """The unpacker's hook for each array and map it completes: counts them and their entries."""

    def __init__(self) -> None:
        self.values = 0

    def __call__(self, container: Any) -> Any:
        self.values += 1 + len(container)
        if self.values > MAX_FRAME_VALUES:
            raise TooManyValues(f"more than {MAX_FRAME_VALUES} arrays, maps and entries")
        return container


def finish(steps: Generator[None, None, Any]) -> Any:
    """Run `steps` to its end at once, and return what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
