"""Vision-encoder outputs per image, so a prompt whose images were all seen before skips the vision tower."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from gateway.engine.local.families import EncoderRows
from gateway.engine.local.image_layout import ImageLayout, Stacked

PIXELS = "pixel_values"
VIDEO_PIXELS = "pixel_values_videos"
DEEPSTACK = "deepstack_features"  # Qwen3-VL: per layer, each image's features its language model adds in
# Tensors an image pass takes whole, not per image (LLaVA-OneVision's prompt image count: whether to tile).
WHOLE = ("batch_num_images",)

Encode = Callable[[dict[str, torch.Tensor]], Any]  # the vision tower alone over some images' tensors

log = logging.getLogger("gateway.engine")


def tower_of(model: Any) -> Encode:
    """The vision tower alone over some images' tensors, as the model's own forward runs it."""
    return lambda tensors: model.get_image_features(**tensors, return_dict=True)


@dataclass(frozen=True)
class _Piece:
    features: torch.Tensor
    layers: tuple[torch.Tensor, ...]  # the image's deepstack features, one per layer (none for most)
    nbytes: int


class EncoderCache:
    """Byte-bounded, least recently used; keyed as held KV keys images (sha256, processing, token count).
    A pass whose images are all held gets their outputs (`mm_encoder_outputs`) instead of pixels; one
    with some new images runs the vision tower on those alone (`encode`) and takes the rest from here.
    The typical case is a turn after its history's KV was lost (trimmed, evicted, expired): the history's
    images are not encoded again. Owned by the generation thread; nothing here is locked."""

    def __init__(self, max_bytes: int, rows: EncoderRows | None) -> None:
        self.max_bytes = max_bytes if rows is not None else 0  # None: the family's outputs are not held
        self.rows = rows
        self.bytes = 0
        self.hits = 0  # passes that took images' outputs from here
        self.encoded = 0  # images encoded on their own, beside held ones, in such passes
        self._held: collections.OrderedDict[str, _Piece] = collections.OrderedDict()
        self._output: type[Any] = BaseModelOutputWithPooling  # the model's own encoder-output class, once seen

    def __len__(self) -> int:
        return len(self._held)

    def inputs(
        self,
        keys: Sequence[str],
        extras: dict[str, torch.Tensor],
        layout: ImageLayout | None = None,
        first: int = 0,
        encode: Encode | None = None,
        whole: bool = False,
    ) -> dict[str, Any]:
        """`extras` for a pass over these images (the prompt's from its `first` on): without pixels, with
        their outputs, when at least one is held (the others encoded alone), or `whole` (a pass that will
        not give its encoder output back: all encoded here, and held); else unchanged."""
        # A pass with a clip's pixels takes no encoder outputs: the models refuse both at once.
        if not keys or PIXELS not in extras or VIDEO_PIXELS in extras or self.max_bytes <= 0:
            return extras
        missing = [i for i, key in enumerate(keys) if key not in self._held]
        fresh = len(missing) == len(keys)
        if fresh and not whole:
            return extras
        if missing and not self._encode(keys, missing, extras, layout, first, encode, fresh):
            return extras
        if any(key not in self._held for key in keys):  # the new ones did not fit the budget
            return extras
        held = [self._held[key] for key in keys]
        for key in keys:
            self._held.move_to_end(key)
        self.hits += not fresh
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
        if self.max_bytes > 0 and keys and encoded is not None and layout is not None:
            self._keep(keys, encoded, layout, range(first, first + len(keys)))

    def clear(self) -> None:
        self._held.clear()
        self.bytes = 0

    def _encode(
        self,
        keys: Sequence[str],
        missing: list[int],
        extras: dict[str, torch.Tensor],
        layout: ImageLayout | None,
        first: int,
        encode: Encode | None,
        fresh: bool = False,
    ) -> bool:
        """Run the vision tower on the pass's images not held, and hold them; False where it cannot. Only
        images encoded beside held ones count (`fresh`: none was held, the pass's own encoding)."""
        if layout is None or encode is None:
            return False
        # The pass's tensors hold the prompt's images from `first` on (a suffix after held KV), in order.
        tensors = {
            key: Stacked(rows.axis, rows.sizes[first : first + len(keys)]).pick(extras[key], missing)
            for key, rows in layout.stacked.items()
            if key in extras
        }
        tensors |= {key: extras[key] for key in WHOLE if key in extras}
        try:
            encoded = encode(tensors)
        except Exception:  # a family whose tower will not run on its own: encode everything, as before
            log.exception("encoding images on their own failed; encoding them all")
            return False
        self.encoded += 0 if fresh else len(missing)
        return self._keep([keys[i] for i in missing], encoded, layout, [first + i for i in missing])

    def _keep(self, keys: Sequence[str], encoded: Any, layout: ImageLayout, images: Sequence[int]) -> bool:
        assert self.rows is not None
        parts = _split(self.rows, encoded.pooler_output, layout, images)
        layers = _per_image_layers(getattr(encoded, DEEPSTACK, None), len(keys))
        if parts is None or layers is None:
            return False
        self._output = type(encoded)
        for index, (key, features) in enumerate(zip(keys, parts)):
            self._hold(key, features, tuple(layer[index] for layer in layers))
        return True

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


def _split(rows: EncoderRows, pooled: Any, layout: ImageLayout, images: Sequence[int]) -> list[torch.Tensor] | None:
    """Each image's share of an encoder output of the prompt's `images`, held as `rows` says; None where
    its sizes disagree."""
    if rows == "per_image":
        return list(pooled) if isinstance(pooled, (list, tuple)) and len(pooled) == len(images) else None
    if rows == "token_rows":
        if not isinstance(pooled, (list, tuple)) or len(pooled) != 1 or max(images) >= len(layout.tokens):
            return None
        tokens = [layout.tokens[i] for i in images]
        return list(torch.split(pooled[0], tokens)) if pooled[0].shape[0] == sum(tokens) else None
    stacked = layout.stacked.get(PIXELS)
    if not isinstance(pooled, torch.Tensor) or stacked is None or stacked.axis != 0 or max(images) >= len(stacked.sizes):
        return None
    sizes = [stacked.sizes[i] for i in images]
    return list(torch.split(pooled, sizes)) if pooled.shape[0] == sum(sizes) else None
