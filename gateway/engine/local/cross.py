"""Cross-attention caches (Llama 3.2 Vision): each row's image states and the mask its decoded tokens repeat."""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


class CrossLayer(DynamicLayer):
    """One cross-attention layer's cache for a batch: each row's projected image states, zero-padded on the
    right to the longest row's, and per row the cross-attention mask row ([images, tiles]) that every
    decoded token repeats, as `generate` repeats the prompt's last one. A row without images has length 0
    and an all-zero mask row, which the model turns into an exact no-op for that row."""

    def __init__(self, lengths: list[int], rows: torch.Tensor | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.lengths = lengths  # per row: how many of the states are its own (images x tiles x patches)
        self.rows = rows  # [batch, images, tiles]; None while no row has images

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self.lengths = [self.lengths[i] for i in indices.tolist()]
        self.rows = self.rows[indices] if self.rows is not None else None

    def decode_mask(self) -> torch.Tensor | None:
        """The cross-attention mask for one decode step, [batch, 1, images, tiles]."""
        return self.rows[:, None] if self.rows is not None else None


def cross_layer_indices(model: Any) -> frozenset[int]:
    """The decoder layers that attend to image states instead of the text (none for most models)."""
    config = model.config.get_text_config(decoder=True)
    return frozenset(getattr(config, "cross_attention_layers", None) or ())


def adopt(cache: Any, indices: frozenset[int], batch: int, mask: torch.Tensor | None) -> None:
    """Replace the plain layers a prefill left at `indices` by CrossLayers; `mask` is the prompt's
    cross-attention mask ([1, tokens, images, tiles]) when it had images (then `batch` is 1)."""
    while len(cache.layers) <= max(indices, default=-1):
        cache.layers.append(DynamicLayer())  # type: ignore[no-untyped-call]
    for index in indices:
        old = cache.layers[index]
        if not _has_states(old):
            cache.layers[index] = CrossLayer([0] * batch)
            continue
        assert mask is not None, "image states without a cross-attention mask"
        layer = CrossLayer([int(old.keys.shape[2])] * batch, mask[:, -1])
        layer.lazy_initialization(old.keys, old.values)
        layer.keys, layer.values = old.keys, old.values
        cache.layers[index] = layer


def decode_args(cache: Any) -> dict[str, Any]:
    """Rows with images attend to them at every step, as their prompt's last token did."""
    layers = [layer for layer in cache.layers if isinstance(layer, CrossLayer)]
    mask = layers[0].decode_mask() if layers else None
    return {"cross_attention_mask": mask} if mask is not None else {}


def merge(mine: CrossLayer, theirs: CrossLayer) -> CrossLayer:
    """The rows of both, in order: states and mask rows right-padded with zeros to the longer of the two."""
    merged = CrossLayer(mine.lengths + theirs.lengths)
    held = [side for side in (mine, theirs) if _has_states(side)]
    if not held:
        return merged
    keys, values = _states(held[0])
    length = max(_states(side)[0].shape[2] for side in held)
    merged.lazy_initialization(keys, values)
    merged.keys = torch.cat([_padded(side, 0, keys, length) for side in (mine, theirs)])
    merged.values = torch.cat([_padded(side, 1, values, length) for side in (mine, theirs)])
    rows = [side.rows for side in held if side.rows is not None]
    images = max(r.shape[1] for r in rows)
    merged.rows = torch.cat([_rows(side, rows[0], images) for side in (mine, theirs)])
    return merged


def row_states(layer: CrossLayer, row: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One row's own states; a row without images gets empty ones, which a later prefill skips."""
    if not _has_states(layer):
        empty = like[row : row + 1, :, :0].clone()
        return empty, empty.clone()
    keys, values = _states(layer)
    length = layer.lengths[row]
    return keys[row : row + 1, :, :length].clone(), values[row : row + 1, :, :length].clone()


def _has_states(layer: Any) -> bool:
    return bool(layer.is_initialized and layer.keys is not None and layer.keys.numel() > 0)


def _states(layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    assert layer.keys is not None and layer.values is not None
    return layer.keys, layer.values


def _padded(side: CrossLayer, which: int, like: torch.Tensor, length: int) -> torch.Tensor:
    """Keys (0) or values (1) of `side`, zero-padded on the right to `length`; zeros for a side without any."""
    if not _has_states(side):
        return like.new_zeros(len(side.lengths), like.shape[1], length, like.shape[3])
    states = _states(side)[which]
    pad = length - states.shape[2]
    return torch.nn.functional.pad(states, (0, 0, 0, pad)) if pad else states


def _rows(side: CrossLayer, like: torch.Tensor, images: int) -> torch.Tensor:
    if side.rows is None:
        return like.new_zeros(len(side.lengths), images, like.shape[2])
    pad = images - side.rows.shape[1]
    return torch.nn.functional.pad(side.rows, (0, 0, 0, pad)) if pad else side.rows
