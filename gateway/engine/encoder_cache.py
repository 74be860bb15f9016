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


@dataclass(frozen=True)
class _Piece:
    features: torch.Tensor
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

    def __len__(self) -> int:
        return len(self._held)

    def inputs(self, keys: Sequence[str], extras: dict[str, torch.Tensor]) -> dict[str, Any]:
        """`extras` for a pass over these images: without pixels, with their held outputs, when every one
        is held; else unchanged."""
        if not keys or PIXELS not in extras or any(key not in self._held for key in keys):
            return extras
        pieces = [self._held[key].features for key in keys]
        for key in keys:
            self._held.move_to_end(key)
        self.hits += 1
        if self.rows == "per_image":
            pooled: Any = tuple(pieces)
        elif self.rows == "pixel_rows":
            pooled = torch.cat(pieces)
        else:
            pooled = [torch.cat(pieces)]
        rest = {k: v for k, v in extras.items() if k != PIXELS}
        return rest | {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=pooled)}}

    def keep(self, keys: Sequence[str], output: Any, layout: ImageLayout | None, first: int) -> None:
        """Hold each image's share of a pass's encoder output: `keys` are the pass's images, which are
        the prompt's from its `first` on. An output this cache cannot split is not held."""
        encoded = output.get("image_outputs") if hasattr(output, "get") else None
        if self.max_bytes <= 0 or not keys or encoded is None or layout is None:
            return
        assert self.rows is not None
        parts = _split(self.rows, encoded.pooler_output, len(keys), layout, first)
        for key, features in zip(keys, parts or ()):
            self._hold(key, features)

    def clear(self) -> None:
        self._held.clear()
        self.bytes = 0

    def _hold(self, key: str, features: torch.Tensor) -> None:
        nbytes = features.numel() * features.element_size()
        if key in self._held or nbytes > self.max_bytes:
            return
        while self.bytes + nbytes > self.max_bytes:
            _, oldest = self._held.popitem(last=False)
            self.bytes -= oldest.nbytes
        self._held[key] = _Piece(features.detach().clone(), nbytes)
        self.bytes += nbytes


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
