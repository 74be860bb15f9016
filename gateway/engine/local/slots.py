"""The batch's KV buffers with spare rows: a turn joins by writing its own rows, and leaves by having the last
row moved into its place, so neither copies the whole batch."""

from __future__ import annotations

import torch

from gateway.engine.local.kv import GrowingLayer, room


class RowBuffers:
    """Per self-attention layer, the key and value buffers this batch allocated, with rows to spare. A layer
    whose buffer is not one of them (it grew along the tokens, or was trimmed) is copied into a new one
    at its next join: one whole-batch copy per growth, where every join and every leave used to copy."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def append(self, index: int, mine: GrowingLayer, theirs: GrowingLayer) -> None:
        """Put `theirs` rows (as wide as mine) after mine, in this buffer's spare rows."""
        assert mine.keys is not None and theirs.keys is not None and theirs.values is not None
        rows, added = mine.keys.shape[0], theirs.keys.shape[0]
        owned = self._owned(index, mine)
        if owned is None or owned[0].shape[0] < rows + added:
            owned = self._allocate(index, mine, rows + added)
        for buffer, states in zip(owned, (theirs.keys, theirs.values)):
            buffer[rows : rows + added, :, : states.shape[2]] = states
        _hold(mine, owned, rows + added)

    def reserve(self, index: int, layer: GrowingLayer, rows: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's own buffers with at least `rows` rows and `tokens` columns (a compiled step's bucket and
        its next column), copied into new ones where they are not; the layer keeps its rows and length."""
        owned = self._owned(index, layer)
        if owned is None or owned[0].shape[0] < rows or owned[0].shape[2] < tokens:
            assert layer.keys is not None
            held = layer.keys.shape[0]
            with torch.inference_mode(False):  # plain tensors, as `append`'s: a join writes them outside inference mode
                owned = self._allocate(index, layer, max(rows, held))
            _hold(layer, owned, held)
        return owned

    def owns(self, layers: list[GrowingLayer]) -> bool:
        """Whether every layer writes into this batch's own buffers (then rows can leave by moving)."""
        return all(self._owned(index, layer) is not None for index, layer in enumerate(layers))

    def keep(self, index: int, layer: GrowingLayer, moves: list[tuple[int, int]], rows: int) -> None:
        """Move each (source, target) row within the layer's own buffers and keep their first `rows`."""
        owned = self._owned(index, layer)
        assert owned is not None
        for buffer in owned:
            for source, target in moves:
                buffer[target] = buffer[source]
        _hold(layer, owned, rows)

    def clear(self) -> None:
        self._buffers.clear()

    def _owned(self, index: int, layer: GrowingLayer) -> tuple[torch.Tensor, torch.Tensor] | None:
        owned = self._buffers.get(index)
        keys = layer._key_buffer
        if owned is None or keys is None or keys.data_ptr() != owned[0].data_ptr() or keys.shape[1:] != owned[0].shape[1:]:
            self._buffers.pop(index, None)  # the layer has moved on (grown, trimmed): let the old buffers go
            return None
        return owned

    def _allocate(self, index: int, layer: GrowingLayer, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """New buffers with room for twice the rows (at most max_rows) and for the tokens the layer grows by."""
        capacity = max(rows, min(self.max_rows, 2 * rows))
        new = []
        for states in (layer._key_buffer, layer._value_buffer):
            assert states is not None
            batch, heads, tokens, dim = states.shape
            tokens = max(tokens, room(states, layer._key_length)[2])
            buffer = states.new_zeros(capacity, heads, tokens, dim)
            buffer[:batch, :, : states.shape[2]] = states
            new.append(buffer)
        self._buffers[index] = (new[0], new[1])
        return new[0], new[1]


def moves_for(keep: list[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """Row moves (source, target) that compact the kept rows (ascending) into the first len(keep) rows,
    moving only rows past that into the gaps; and the old row each new row holds."""
    rows, kept = len(keep), set(keep)
    gaps = [row for row in range(rows) if row not in kept]
    movers = [row for row in keep if row >= rows]
    placed = dict(zip(gaps, movers))
    return list(zip(movers, gaps)), [placed.get(row, row) for row in range(rows)]


def _hold(layer: GrowingLayer, owned: tuple[torch.Tensor, torch.Tensor], rows: int) -> None:
    """The layer writes into the first `rows` rows of the owned buffers, its token count unchanged."""
    length = layer._key_length
    layer._key_buffer, layer._value_buffer = owned[0][:rows], owned[1][:rows]
    layer._key_length = layer._value_length = length
