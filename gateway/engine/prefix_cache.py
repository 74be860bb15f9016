"""Held KV caches of finished turns, keyed by adapter and token ids, reused by the longest exact prefix."""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

LayerStates = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, heads, tokens, dim]


@dataclass(frozen=True)
class HeldPrefix:
    """What a lookup found: the first `length` positions of `layers` are the prompt's first `length` tokens."""

    length: int
    layers: LayerStates


@dataclass(frozen=True)
class _Entry:
    adapter: str | None
    token_ids: tuple[int, ...]
    layers: LayerStates
    nbytes: int


def states_bytes(layers: LayerStates) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


def common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    """A byte-bounded, least-recently-used store of sequences' KV states. Owned by the generation
    thread: nothing here is locked. Held bytes never exceed `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self._next_key = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, adapter: str | None, token_ids: tuple[int, ...]) -> HeldPrefix | None:
        """The longest held prefix of `token_ids`, leaving at least one token to prefill (its logits
        start the reply); None when nothing useful is held."""
        best_key, best = -1, 0
        for key, entry in self._entries.items():
            if entry.adapter == adapter:
                length = min(common_prefix(entry.token_ids, token_ids), len(token_ids) - 1)
                if length > best:
                    best_key, best = key, length
        if best == 0:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(best_key)
        return HeldPrefix(best, self._entries[best_key].layers)

    def store(self, adapter: str | None, token_ids: tuple[int, ...], layers: LayerStates) -> None:
        """Hold `layers` for `token_ids`; entries it extends are dropped, the oldest go while over budget."""
        nbytes = states_bytes(layers)
        if nbytes > self.max_bytes or not token_ids:
            return
        for key, entry in list(self._entries.items()):
            if entry.adapter == adapter and common_prefix(entry.token_ids, token_ids) == len(entry.token_ids):
                self._drop(key)
        while self.bytes + nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._entries[self._next_key] = _Entry(adapter, token_ids, layers, nbytes)
        self._next_key += 1
        self.bytes += nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _drop(self, key: int) -> None:
        self.bytes -= self._entries.pop(key).nbytes
