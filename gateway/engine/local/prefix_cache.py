"""Held KV caches of finished turns, keyed by adapter and token ids, reused by the longest exact prefix."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

LayerStates = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, heads, tokens, dim]
Spill = Callable[[LayerStates], LayerStates]  # copies states off the device, into host memory
Tier = collections.OrderedDict[int, "_Entry"]  # least recently used first


@dataclass(frozen=True)
class HeldPrefix:
    """What a lookup found: the first `length` positions of `layers` are the prompt's first `length` tokens."""

    length: int
    layers: LayerStates


@dataclass
class _Entry:
    adapter: str | None
    token_ids: tuple[int, ...]
    layers: LayerStates
    nbytes: int
    used_at: float
    once: bool = False  # a warm-up's: dropped at its session's first hit (the turn it was for has it; nothing else will)
    owner: str | None = None  # a warm-up's session (its affinity): another's prompt sharing its opening leaves it


def states_bytes(layers: LayerStates) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


def common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def pin_to_host(layers: LayerStates) -> LayerStates:
    """A copy in pinned host memory, so a later hit copies back to the GPU at full speed."""
    return [(_pinned(k), _pinned(v)) for k, v in layers]


def _pinned(states: torch.Tensor) -> torch.Tensor:
    return torch.empty(states.shape, dtype=states.dtype, pin_memory=True).copy_(states)


def default_budget(device: torch.device) -> int:
    """Held KV's byte budget when none is set: a quarter of what the GPU has free once the model is
    loaded (the rest is for the running batch's own cache and activations); 256 MiB on the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free) // 4
    return 256 << 20


def spill_for(device: torch.device) -> Spill | None:
    """Where entries evicted from the device go before they are dropped: pinned host memory on a GPU;
    on the CPU they are in host memory already, so nowhere."""
    return pin_to_host if device.type == "cuda" else None


class PrefixCache:
    """A byte-bounded, least-recently-used store of sequences' KV states on the device, spilling what
    it evicts to a second bounded tier in host memory (on a GPU) before dropping it; an entry unused for
    `idle_s` goes. Owned by the generation thread: nothing here is locked. `bytes` never exceeds
    `max_bytes`, nor `spilled_bytes` `spill_bytes`."""

    def __init__(
        self,
        max_bytes: int,
        idle_s: float = 0.0,
        spill_bytes: int = 0,
        spill: Spill | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.idle_s = idle_s  # 0: entries never expire
        self.spill_bytes = spill_bytes if spill is not None else 0
        self.bytes = 0
        self.spilled_bytes = 0
        self.hits = 0
        self.misses = 0
        self._spill = spill
        self._clock = clock
        self._device: Tier = collections.OrderedDict()
        self._host: Tier = collections.OrderedDict()
        self._next_key = 0

    def __len__(self) -> int:
        return len(self._device) + len(self._host)

    def held_length(self, adapter: str | None, token_ids: tuple[int, ...]) -> int:
        """How much of `token_ids` a lookup would find held now; nothing is counted, moved or taken."""
        return self._longest(adapter, token_ids)[0]

    def lookup(self, adapter: str | None, token_ids: tuple[int, ...], affinity: str | None = None) -> HeldPrefix | None:
        """The longest held prefix of `token_ids`, leaving at least one token to prefill (its logits
        start the reply); None when nothing useful is held. `affinity`: the session asking (a warm-up's entry is
        used up by its own session's hit, not by another's prompt that shares only a system prompt with it)."""
        length, tier, key = self._longest(adapter, token_ids)
        if length == 0:
            self.misses += 1
            return None
        self.hits += 1
        held = HeldPrefix(length, tier[key].layers)
        if tier[key].once and tier[key].owner in (None, affinity):
            self._drop(tier, key)
        else:
            tier.move_to_end(key)
            tier[key].used_at = self._clock()
        return held

    def _longest(self, adapter: str | None, token_ids: tuple[int, ...]) -> tuple[int, Tier, int]:
        """The longest held prefix's length (at most all but the last token), its tier and key (0 and -1: none)."""
        best: tuple[int, Tier, int] = (0, self._device, -1)
        for tier in (self._device, self._host):
            for key, entry in tier.items():
                if entry.adapter == adapter:
                    length = min(common_prefix(entry.token_ids, token_ids), len(token_ids) - 1)
                    if length > best[0]:
                        best = (length, tier, key)
        return best

    def store(
        self, adapter: str | None, token_ids: tuple[int, ...], layers: LayerStates, once: bool = False, owner: str | None = None
    ) -> None:
        """Hold `layers` for `token_ids`; entries it extends are dropped, the oldest spill or go while
        over budget. `once`: a warm-up's, dropped at the first hit of its session `owner` (its question, or a
        newer warm-up, which extends it: a warm-up's prompt ends where its question's text would begin, so the
        question's own entry never extends it, and it would otherwise hold its bytes until it was the oldest)."""
        nbytes = states_bytes(layers)
        if nbytes > self.max_bytes or not token_ids:
            return
        for tier in (self._device, self._host):
            for key, entry in list(tier.items()):
                if entry.adapter == adapter and common_prefix(entry.token_ids, token_ids) == len(entry.token_ids):
                    self._drop(tier, key)
        while self.bytes + nbytes > self.max_bytes:
            self._evict()
        self._device[self._next_key] = _Entry(adapter, token_ids, layers, nbytes, self._clock(), once, owner if once else None)
        self._next_key += 1
        self.bytes += nbytes

    def expire(self) -> None:
        """Drop entries unused for `idle_s`: only the least recently used of each tier are looked at."""
        if self.idle_s <= 0:
            return
        cutoff = self._clock() - self.idle_s
        for tier in (self._device, self._host):
            while tier and next(iter(tier.values())).used_at <= cutoff:
                self._drop(tier, next(iter(tier)))

    def seconds_to_expiry(self) -> float | None:
        """How long until `expire` has something to drop; None when nothing ever will."""
        oldest = [next(iter(tier.values())).used_at for tier in (self._device, self._host) if tier]
        if self.idle_s <= 0 or not oldest:
            return None
        return max(0.0, min(oldest) + self.idle_s - self._clock())

    def drop_adapter(self, adapter: str) -> None:
        """Drop every entry computed with an adapter (it was unloaded)."""
        for tier in (self._device, self._host):
            for key in [key for key, entry in tier.items() if entry.adapter == adapter]:
                self._drop(tier, key)

    def clear(self) -> None:
        self._device.clear()
        self._host.clear()
        self.bytes = self.spilled_bytes = 0

    def _evict(self) -> None:
        """The device's least recently used entry moves to host memory where it fits, else goes."""
        key, entry = self._device.popitem(last=False)
        self.bytes -= entry.nbytes
        if self._spill is None or entry.nbytes > self.spill_bytes:
            return
        while self.spilled_bytes + entry.nbytes > self.spill_bytes:
            self._drop(self._host, next(iter(self._host)))
        entry.layers = self._spill(entry.layers)
        self._host[key] = entry
        self.spilled_bytes += entry.nbytes

    def _drop(self, tier: Tier, key: int) -> None:
        entry = tier.pop(key)
        if tier is self._device:
            self.bytes -= entry.nbytes
        else:
            self.spilled_bytes -= entry.nbytes
