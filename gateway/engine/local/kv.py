"""A KV cache layer that appends in place, in a buffer with room to grow, instead of copying itself."""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

# A full buffer grows by a quarter of what it holds, within these bounds (tokens): each token's states
# are then copied a few times over a turn, where transformers' DynamicLayer copies the whole cache on
# every decode step (torch.cat), which was 43% of decode time for a 4K-token history. The first write
# (a prefill) is sized exactly: a prompt at the edge of memory needs no more than it did.
MIN_GROWTH = 64
MAX_GROWTH = 512
GROWTH = 0.25


class FilledPart:
    """A layer's `keys` or `values`: reads as the filled part of its buffer (`_key_buffer`, `_key_length`
    for `keys`); a tensor assigned to it becomes the whole buffer, full."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.buffer, self.length = f"_{name[:-1]}_buffer", f"_{name[:-1]}_length"

    def __get__(self, layer: object, owner: type | None = None) -> torch.Tensor | None:
        if layer is None:  # read on the class: nothing is filled there
            return None
        return _filled(getattr(layer, self.buffer), getattr(layer, self.length))

    def __set__(self, layer: object, states: torch.Tensor | None) -> None:
        setattr(layer, self.buffer, states)
        setattr(layer, self.length, _tokens(states))


class GrowingLayer(DynamicLayer):
    """`keys` and `values` read as the filled part of a larger buffer; `update` writes new states into
    the free part and grows the buffer only when it is full. Anything assigned to `keys` or `values`
    (a concatenation, a selection, a held prefix's view) is adopted as a full buffer, so memory this
    layer did not allocate is never written to."""

    def __init__(self) -> None:
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        # Filled tokens of each buffer: equal after every update, apart between two assignments.
        self._key_length = self._value_length = 0
        super().__init__()  # type: ignore[no-untyped-call]

    keys = FilledPart()
    values = FilledPart()

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values, start = self._key_buffer, self._value_buffer, self._key_length
        assert start == self._value_length, "keys and values hold different token counts"
        end = start + key_states.shape[-2]
        if keys is None or values is None or keys.dim() != 4 or start == 0:
            keys, values = torch.empty_like(key_states), torch.empty_like(value_states)
        elif end > keys.shape[-2] or end > values.shape[-2]:
            keys, values = _grown(keys, start, end), _grown(values, start, end)
        keys[:, :, start:end] = key_states
        values[:, :, start:end] = value_states
        self._key_buffer, self._value_buffer = keys, values
        self._key_length = self._value_length = end
        return keys[:, :, :end], values[:, :, :end]

    @classmethod
    def holding(cls, keys: torch.Tensor, values: torch.Tensor, length: int) -> GrowingLayer:
        """A layer that owns `keys` and `values` (buffers nobody else reads) with their first `length`
        tokens filled: the next update writes after them in place."""
        layer = cls()
        layer.lazy_initialization(keys, values)
        layer._key_buffer, layer._value_buffer = keys, values
        layer._key_length = layer._value_length = length
        return layer

    def capacity(self) -> int:
        """Tokens the buffer holds before it must grow (for tests and memory accounting)."""
        return 0 if self._key_buffer is None or self._key_buffer.dim() != 4 else int(self._key_buffer.shape[-2])


def new_cache() -> Any:
    """An empty cache whose layers, created as the model fills them, are GrowingLayers."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    return cache


def held_cache(layers: Any, length: int, device: torch.device) -> Any:
    """A cache over a held prefix's first `length` columns: views, not copies (the next forward pass copies
    them into its buffer)."""
    cache = new_cache()
    for keys, values in layers:
        layer = GrowingLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys[:, :, :length].to(device), values[:, :, :length].to(device)
        cache.layers.append(layer)
    return cache


def _filled(buffer: torch.Tensor | None, length: int) -> torch.Tensor | None:
    if buffer is None or buffer.dim() != 4 or buffer.shape[-2] == length:
        return buffer
    return buffer[:, :, :length]


def _tokens(states: torch.Tensor | None) -> int:
    return int(states.shape[-2]) if states is not None and states.dim() == 4 else 0


def room(states: torch.Tensor, end: int) -> list[int]:
    """The shape of a buffer holding `end` tokens of `states`' rows with room to grow."""
    batch, heads, _, dim = states.shape
    return [batch, heads, end + min(MAX_GROWTH, max(MIN_GROWTH, int(end * GROWTH))), dim]


def _grown(buffer: torch.Tensor, length: int, end: int) -> torch.Tensor:
    bigger = buffer.new_empty(room(buffer, end))
    bigger[:, :, :length] = buffer[:, :, :length]
    return bigger
