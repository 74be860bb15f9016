"""A response format's canonical hash, computed a slice at a time and remembered, so no loop callback runs it long."""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import threading
from collections import OrderedDict
from collections.abc import Generator
from typing import Any

import msgspec

from gateway.core import request as req

# Values canonicalised between two yields: a few ms of CPU. A whole 14 MB schema (512k properties) sorted
# and encoded at once took 350 ms of one event-loop callback; in slices, other clients run in between.
SLICE_VALUES = 1024
_REMEMBERED = 64  # formats whose key is kept, by identity: the loop's check and the turn's resolve share one walk

Key = tuple[str, int]


def format_key(response_format: req.ResponseFormat) -> Key:
    """The format's canonical hash (sha256 of sorted-key JSON) and that JSON's size in bytes, at once."""
    return remembered(response_format) or finish(format_key_steps(response_format))


async def format_key_sliced(response_format: req.ResponseFormat, limit: int) -> Key:
    """`format_key` with the loop's other work between slices; past `limit` bytes it stops early (the size
    returned is then over `limit` and the hash is of no use: the format is refused)."""
    known = remembered(response_format)
    if known is not None:
        return known
    done: list[Key] = []
    for _ in _returning(format_key_steps(response_format, limit), done):
        await asyncio.sleep(0)
    return done[0]


def format_key_steps(response_format: req.ResponseFormat, limit: int | None = None) -> Generator[None, None, Key]:
    """`format_key` as a generator yielding between slices. The schema (the only part a client can make
    large) is walked; the rest is one small encode."""
    digest = hashlib.sha256()
    schema: Any = None
    head = response_format
    if isinstance(response_format, req.JsonSchemaFormat):
        schema = response_format.json_schema.schema
        spec = msgspec.structs.replace(response_format.json_schema, schema={})
        head = msgspec.structs.replace(response_format, json_schema=spec)
    size = _feed(digest, msgspec.json.encode(head, order="sorted") + b"\n")
    walk = _Walk(digest, size, limit)
    if schema is not None:
        yield from walk.value(schema)
    key = (digest.hexdigest(), walk.size)
    if walk.size <= (limit if limit is not None else walk.size):
        _remember(response_format, key)
    return key


class _Walk:
    """The sorted-key JSON of a value, fed to a digest as it is made, counting values to yield between slices."""

    def __init__(self, digest: Any, size: int, limit: int | None) -> None:
        self.digest, self.size, self.limit, self.values = digest, size, limit, 0

    def value(self, value: Any) -> Generator[None, None, None]:
        if self.limit is not None and self.size > self.limit:
            return
        self.values += 1
        if self.values >= SLICE_VALUES:
            self.values = 0
            yield
        if isinstance(value, (dict, list)) and len(value) <= SLICE_VALUES and _flat(value):
            self.size += _feed(self.digest, msgspec.json.encode(value, order="sorted"))  # at memory speed
            self.values += len(value)
        elif isinstance(value, dict):
            yield from self._object(value)
        elif isinstance(value, list):
            yield from self._array(value)
        else:
            self.size += _feed(self.digest, msgspec.json.encode(value))

    def _object(self, value: dict[Any, Any]) -> Generator[None, None, None]:
        if self._past_limit(4 * len(value)):  # each entry is at least `"":0,`
            return
        self.size += _feed(self.digest, b"{")
        # Sorted a slice at a time, then merged: one sort of 200k names took 250 ms of one callback.
        items = list(value.items())
        chunks: list[list[tuple[bytes, Any]]] = []
        for start in range(0, len(items), SLICE_VALUES):
            named = [(msgspec.json.encode(str(name)), item) for name, item in items[start : start + SLICE_VALUES]]
            chunks.append(sorted(named, key=_name))
            yield
        for n, (name, item) in enumerate(heapq.merge(*chunks, key=_name)):
            self.size += _feed(self.digest, (b"," if n else b"") + name + b":")
            yield from self.value(item)
        self.size += _feed(self.digest, b"}")

    def _array(self, value: list[Any]) -> Generator[None, None, None]:
        if self._past_limit(2 * len(value)):  # each element is at least `0,`
            return
        self.size += _feed(self.digest, b"[")
        for start in range(0, len(value), SLICE_VALUES):
            part = value[start : start + SLICE_VALUES]
            self.size += _feed(self.digest, b"," if start else b"")
            if _flat(part):  # a slice of leaves (an `enum`, a `required` list) in one encode, brackets left out
                self.size += _feed(self.digest, msgspec.json.encode(part)[1:-1])
                yield
                continue
            for n, item in enumerate(part):
                self.size += _feed(self.digest, b"," if n else b"")
                yield from self.value(item)
        self.size += _feed(self.digest, b"]")

    def _past_limit(self, at_least: int) -> bool:
        """Whether a container of `at_least` bytes takes the JSON past the limit: then it is not walked (the
        format is refused), so no slice of sorting or encoding works for a format that could never pass."""
        if self.limit is None or self.size + at_least <= self.limit:
            return False
        self.size += at_least
        return True


def _flat(value: dict[Any, Any] | list[Any]) -> bool:
    """Whether a container holds no container: then one encode of it is short (it has few entries)."""
    return not any(isinstance(item, (dict, list)) for item in (value.values() if isinstance(value, dict) else value))


def _name(entry: tuple[bytes, Any]) -> bytes:
    return entry[0]


def _feed(digest: Any, data: bytes) -> int:
    digest.update(data)
    return len(data)


def finish(steps: Generator[None, None, Key]) -> Key:
    """Run `steps` to its end at once (off the loop), and return what it returns."""
    done: list[Key] = []
    for _ in _returning(steps, done):
        pass
    return done[0]


def _returning(steps: Generator[None, None, Key], done: list[Key]) -> Generator[None, None, None]:
    """`steps`, its return value appended to `done`."""
    done.append((yield from steps))


_keys: OrderedDict[int, tuple[req.ResponseFormat, Key]] = OrderedDict()
_lock = threading.Lock()  # the loop remembers, the generation thread looks up


def remembered(response_format: req.ResponseFormat) -> Key | None:
    """The key of this very object, if it was computed lately (the entry holds the object, so its id is
    not reused while remembered)."""
    with _lock:
        entry = _keys.get(id(response_format))
    return entry[1] if entry is not None and entry[0] is response_format else None


def _remember(response_format: req.ResponseFormat, key: Key) -> None:
    with _lock:
        _keys[id(response_format)] = (response_format, key)
        _keys.move_to_end(id(response_format))
        while len(_keys) > _REMEMBERED:
            _keys.popitem(last=False)
