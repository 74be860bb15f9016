"""Vision-encoder outputs per image, so a prompt whose images were all seen before skips the vision tower."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from gateway.engine.families import EncoderRows
from gateway.engine.image_layout import ImageLayout

PIXELS = "pixel_values"
DEEPSTACK = "deepstack_features"  # Qwen3-VL: per layer, each image's features its language model adds in


@dataclass(frozen=True)
class _Piece:
    features: torch.Tensor
    layers: tuple[torch.Tensor, ...]  # the image's deepstack features, one per layer (none for most)
    nbytes: int


class EncoderCache:
    """Byte-bounded, least recently used; keyed as held KV keys images (sha256, processing, token count).
    Used all or nothing per forward pass: when every image a pass would encode is held, the pass gets
    their outputs (`mm_encoder_outputs`) instead of pixels. The typical case is a text turn after held KV
    was lost (trimmed, evicted, expired): the history's images are not encoded again. Owned by the
    generation thread; nothing here is locked."""

    def __init__(self, max_bytes: int, rows: EncoderRows | None) -> None:
        self.max_bytes = max_bytes if rows is not None else 0  # None: the family's outputs are not held
        self.rows = rows
        self.bytes = 0
        self.hits = 0  # passes that skipped the vision tower
        self._held: collections.OrderedDict[str, _Piece] = collections.OrderedDict()
        self._output: type[Any] = BaseModelOutputWithPooling  # the model's own encoder-output class, once seen

    def __len__(self) -> int:
        return len(self._held)

    def inputs(self, keys: Sequence[str], extras: dict[str, torch.Tensor]) -> dict[str, Any]:
        """`extras` for a pass over these images: without pixels, with their held outputs, when every one
        is held; else unchanged."""
        if not keys or PIXELS not in extras or any(key not in self._held for key in keys):
            return extras
        held = [self._held[key] for key in keys]
        for key in keys:
            self._held.move_to_end(key)
        self.hits += 1
        pieces = [piece.features for piece in held]
        encoded: dict[str, Any] = {}
        if self.rows == "per_image":
            encoded["pooler_output"] = tuple(pieces)
            if held[0].layers:
                encoded[DEEPSTACK] = [tuple(piece.layers[n] for piece in held) for n in range(len(held[0].layers))]
        elif self.rows == "pixel_rows":
            encoded["pooler_output"] = torch.cat(pieces)
        else:
            encoded["pooler_output"] = [torch.cat(pieces)]
        rest = {k: v for k, v in extras.items() if k != PIXELS}
        return rest | {"mm_encoder_outputs": {"image": self._output(**encoded)}}

    def keep(self, keys: Sequence[str], output: Any, layout: ImageLayout | None, first: int) -> None:
        """Hold each image's share of a pass's encoder output: `keys` are the pass's images, which are
        the prompt's from its `first` on. An output this cache cannot split is not held."""
        encoded = output.get("image_outputs") if hasattr(output, "get") else None
        if self.max_bytes <= 0 or not keys or encoded is None or layout is None:
            return
        assert self.rows is not None
        parts = _split(self.rows, encoded.pooler_output, len(keys), layout, first)
        layers = _per_image_layers(getattr(encoded, DEEPSTACK, None), len(keys))
        if parts is None or layers is None:
            return
        self._output = type(encoded)
        for index, (key, features) in enumerate(zip(keys, parts)):
            self._hold(key, features, tuple(layer[index] for layer in layers))

    def clear(self) -> None:
        self._held.clear()
        self.bytes = 0

    def _hold(self, key: str, features: torch.Tensor, layers: tuple[torch.Tensor, ...]) -> None:
        nbytes = sum(t.numel() * t.element_size() for t in (features, *layers))
        if key in self._held or nbytes > self.max_bytes:
            return
        while self.bytes + nbytes > self.max_bytes:
            _, oldest = self._held.popitem(last=False)
            self.bytes -= oldest.nbytes
        self._held[key] = _Piece(features.detach().clone(), tuple(t.detach().clone() for t in layers), nbytes)
        self.bytes += nbytes


def _per_image_layers(layers: Any, images: int) -> list[Sequence[torch.Tensor]] | None:
    """Deepstack features as each layer's per-image items ([] where the model has none); None where they
    are not one item per image."""
    if layers is None:
        return []
    if all(isinstance(layer, (list, tuple)) and len(layer) == images for layer in layers):
        return list(layers)
    return None


def _split(rows: EncoderRows, pooled: Any, images: int, layout: ImageLayout, first: int) -> list[torch.Tensor] | None:
    """Each image's share of an encoder output held as `rows` says; None where its sizes disagree."""
    if rows == "per_image":
        return list(pooled) if isinstance(pooled, (list, tuple)) and len(pooled) == images else None
    if rows == "token_rows":
        tokens = layout.tokens[first : first + images]
        if isinstance(pooled, (list, tuple)) and len(pooled) == 1 and len(tokens) == images:
            return list(torch.split(pooled[0], list(tokens))) if pooled[0].shape[0] == sum(tokens) else None
        return None
    stacked = layout.stacked.get(PIXELS)
    if not isinstance(pooled, torch.Tensor) or stacked is None or stacked.axis != 0:
        return None
    sizes = stacked.sizes[first : first + images]
    return list(torch.split(pooled, list(sizes))) if len(sizes) == images and pooled.shape[0] == sum(sizes) else None
