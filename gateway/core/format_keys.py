"""A response format's canonical hash, computed a slice at a time and remembered, so no loop callback runs it long."""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import threading
from collections import OrderedDict
from collections.abc import Generator
from itertools import islice
from typing import Any

import msgspec

from gateway.core import request as req
from gateway.core.json_bounds import level_entries

# Values canonicalised between two yields: a few ms of CPU. A whole 14 MB schema (512k properties) sorted
# and encoded at once took 350 ms of one event-loop callback; in slices, other clients run in between.
SLICE_VALUES = 1024
# A container (or a run of entries) holding at most this many values, all levels, is encoded in one C call (a few ms at
# worst, a 16k-name object sorted): walked in Python a value at a time, a 9,000-property schema took 24-44 ms of loop time.
ENCODE_VALUES = 32 * 1024
_PROBES_LOST = 4  # probes of containers found too big, before any value is passed (a schema's top levels)
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


async def json_size_sliced(value: Any, limit: int) -> int:
    """The size of `value`'s compact JSON, with the loop's other work between slices; past `limit` bytes it
    stops early (the size returned is then over `limit`)."""
    walk = _Walk(hashlib.sha256(), 0, limit)  # its digest is of no use here
    for _ in walk.value(value):
        await asyncio.sleep(0)
    return walk.size


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
        self.walked = 0  # values passed so far, ever
        self.lost = 0  # entries counted by _small's probes that found a container too big, ever

    def value(self, value: Any) -> Generator[None, None, None]:
        if self.limit is not None and self.size > self.limit:
            return
        yield from self._counted(1)
        weight = self._small(value) if type(value) in _CONTAINERS else 0
        if weight:
            self.size += _feed(self.digest, msgspec.json.encode(value, order="sorted"))  # at memory speed
            yield from self._counted(weight - 1)
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
        chunks: list[list[tuple[bytes, str, Any]]] = []
        for start in range(0, len(items), SLICE_VALUES):
            part = items[start : start + SLICE_VALUES]
            chunks.append(sorted(((msgspec.json.encode(str(name)), str(name), item) for name, item in part), key=_name))
            yield
        merged = heapq.merge(*chunks, key=_name)
        for runs, run in enumerate(iter(lambda: list(islice(merged, SLICE_VALUES)), [])):
            self.size += _feed(self.digest, b"," if runs else b"")
            # A run of small entries (the properties of one object, say) in one encode, braces left out.
            # (A run of the whole object: value() found it too big already.)
            weight = self._small([item for _, _, item in run]) if len(run) < len(value) else 0
            if weight:
                entries = msgspec.json.encode({name: item for _, name, item in run}, order="sorted")[1:-1]
                self.size += _feed(self.digest, entries)
                yield from self._counted(weight)
                continue
            for n, (encoded, _, item) in enumerate(run):
                self.size += _feed(self.digest, (b"," if n else b"") + encoded + b":")
                yield from self.value(item)
        self.size += _feed(self.digest, b"}")

    def _array(self, value: list[Any]) -> Generator[None, None, None]:
        if self._past_limit(2 * len(value)):  # each element is at least `0,`
            return
        self.size += _feed(self.digest, b"[")
        for start in range(0, len(value), SLICE_VALUES):
            part = value[start : start + SLICE_VALUES]
            self.size += _feed(self.digest, b"," if start else b"")
            weight = self._small(part) if len(part) < len(value) else 0  # the whole array was probed
            if weight:  # a slice of small values (an `enum`, a `required` list) in one encode, brackets left out
                self.size += _feed(self.digest, msgspec.json.encode(part, order="sorted")[1:-1])
                yield from self._counted(weight)
                continue
            for n, item in enumerate(part):
                self.size += _feed(self.digest, b"," if n else b"")
                yield from self.value(item)
        self.size += _feed(self.digest, b"]")

    def _small(self, value: dict[Any, Any] | list[Any]) -> int:
        """The values `value` holds when at most ENCODE_VALUES (it is then encoded at once), else 0. A probe
        that finds a big container is work lost, so probing pauses while the loss is more than the values
        passed (plus a few probes): a schema built so that each of its nested containers is probed in vain
        (each just too big) costs then about what the walk did without probes."""
        if self.lost > self.walked + _PROBES_LOST * ENCODE_VALUES:
            return 0
        count = _count_within(value, ENCODE_VALUES)
        if count <= ENCODE_VALUES:
            return count
        self.lost += min(count, 2 * ENCODE_VALUES)  # a count stops within a level past the bound
        return 0

    def _counted(self, weight: int) -> Generator[None, None, None]:
        """Count `weight` values passed, yielding once they make a slice."""
        self.walked += weight
        self.values += weight
        if self.values >= SLICE_VALUES:
            self.values = 0
            yield

    def _past_limit(self, at_least: int) -> bool:
        """Whether a container of `at_least` bytes takes the JSON past the limit: then it is not walked (the
        format is refused), so no slice of sorting or encoding works for a format that could never pass."""
        if self.limit is None or self.size + at_least <= self.limit:
            return False
        self.size += at_least
        return True


def _count_within(value: dict[Any, Any] | list[Any], most: int) -> int:
    """The values `value` holds (itself and every entry, all levels) when at most `most`; else a count past
    `most`. Counted a level at a time with C loops (`len` over a level, one comprehension for the next), and
    given up before a level that would pass `most` is gathered: a count costs at most `most` entries."""
    count, level = 0, [value]
    while level:
        count += len(level) + sum(map(len, level))
        if count > most:
            return count
        level = [entry for entry in level_entries(level) if type(entry) in _CONTAINERS]
    return count


_CONTAINERS = (dict, list)


def _name(entry: tuple[bytes, str, Any]) -> bytes:
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
