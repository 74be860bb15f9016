"""Prompts with images on a held prefix: image tokens keyed by their content, the suffix's own images."""

from __future__ import annotations

import hashlib

import torch

from gateway.engine.local.prompt import ModelInputs

Extras = dict[str, torch.Tensor]


def content_key(inputs: ModelInputs) -> tuple[int, ...] | None:
    """The prompt's token ids with each image's tokens replaced by a negative number drawn from the
    image's key (its sha256, how it was processed) and its token count: the placeholders are the same for
    every image, so token ids alone would match a different picture. None where this prompt's images
    cannot be reused."""
    ids: list[int] = inputs.input_ids[0].tolist()
    if not inputs.extras:
        return tuple(ids)
    if inputs.layout is None or len(inputs.layout.spans) != len(inputs.images):
        return None
    keyed = zip((*inputs.layout.spans, *inputs.layout.videos), (*inputs.images, *inputs.layout.video_keys))
    for (start, end), key in keyed:
        ids[start:end] = [_image_token(key, end - start)] * (end - start)
    return tuple(ids)


def whole_pictures(key: tuple[int, ...], length: int) -> int:
    """`length`, or less where the first `length` positions of content key `key` would end inside a picture's
    span: the span's start (a held prefix stops before a picture, never inside it; see `_image_token`)."""
    while 0 < length < len(key) and key[length] < 0 and key[length - 1] == key[length]:
        length -= 1
    return length


def _image_token(image: str, tokens: int) -> int:
    # The count is in the number too: a picture's span of another length is another processing of it, and
    # a held prefix must stop where it starts, never inside it.
    return -1 - int(hashlib.sha256(f"{image}/{tokens}".encode()).hexdigest()[:15], 16)


def suffix_extras(inputs: ModelInputs, start: int) -> Extras:
    """What the tokens from `start` on need: the images after it, their rows of each image tensor and the
    per-token tensors from `start` (nothing where they hold no image). Images before `start` are in the
    held KV already; tensors the model reads per prompt or by absolute position stay whole."""
    extras, layout = inputs.extras, inputs.layout
    if not extras:
        return {}
    assert layout is not None, "a held prefix with images needs their layout"
    held = images_before(inputs, start)
    held_clips = sum(1 for first, _ in layout.videos if first < start)
    for spans, count in ((layout.spans, held), (layout.videos, held_clips)):
        assert count == 0 or spans[count - 1][1] <= start, "a held prefix never ends inside an image or a clip"
    if held == len(layout.spans) and held_clips == len(layout.videos):
        return {}
    suffix = dict(extras)
    parts = ((layout.stacked, held, len(layout.spans)), (layout.video_stacked, held_clips, len(layout.videos)))
    for stacked, count, total in parts:
        for key, rows in stacked.items():
            if count == total:  # none left after the held prefix: the model gets none of these tensors
                suffix.pop(key, None)
            else:
                suffix[key] = rows.after(extras[key], count)
    for key in layout.per_token:
        suffix[key] = extras[key][:, start:]
    return suffix


def images_before(inputs: ModelInputs, start: int) -> int:
    """How many of the prompt's images begin before token `start` (those a held prefix holds)."""
    layout = inputs.layout
    return 0 if layout is None else sum(1 for first, _ in layout.spans if first < start)


def rope_inputs(extras: Extras) -> Extras:
    """What multimodal rotary positions are computed from over the whole prompt (no pixels)."""
    return {k: v for k, v in extras.items() if k in ROPE_INPUTS}


# Qwen2.5-VL spaces a video's temporal patches by their seconds (`second_per_grid_ts`).
ROPE_INPUTS = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")
