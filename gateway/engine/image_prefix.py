"""Prompts with images on a held prefix: image tokens keyed by their content, the suffix's own images."""

from __future__ import annotations

import torch

from gateway.engine.prompt import ModelInputs

Extras = dict[str, torch.Tensor]

# The layout reuse understands (GLM-4V, the Qwen2-VL family): each image one run of image-typed tokens,
# its pixel rows the product of its grid. Prompts from any other layout are prefilled in full.
_GRID_LAYOUT = {"pixel_values", "image_grid_thw", "mm_token_type_ids"}
_IMAGE = 1  # an image token in mm_token_type_ids (0 text, 2 video)


def image_spans(extras: Extras) -> list[tuple[int, int]] | None:
    """Each image's [start, end) token span, in prompt order; None where the layout is not the grid one."""
    if set(extras) != _GRID_LAYOUT:
        return None
    types = extras["mm_token_type_ids"][0].tolist()
    spans: list[tuple[int, int]] = []
    for i, kind in enumerate([*types, 0]):
        if kind == _IMAGE and (not spans or spans[-1][1] != i):
            spans.append((i, i + 1))
        elif kind == _IMAGE:
            spans[-1] = (spans[-1][0], i + 1)
    grid = extras["image_grid_thw"]
    if len(spans) != grid.shape[0] or int(grid.prod(-1).sum()) != extras["pixel_values"].shape[0]:
        return None
    return spans


def content_key(inputs: ModelInputs) -> tuple[int, ...] | None:
    """The prompt's token ids with each image's placeholder tokens replaced by a negative number drawn
    from the image's sha256: the placeholders are the same for every image, so token ids alone would
    match a different picture. None where this prompt's images cannot be reused."""
    ids: list[int] = inputs.input_ids[0].tolist()
    if not inputs.extras:
        return tuple(ids)
    spans = image_spans(inputs.extras)
    if spans is None or len(spans) != len(inputs.images):
        return None
    for (start, end), digest in zip(spans, inputs.images):
        ids[start:end] = [-1 - int(digest[:15], 16)] * (end - start)
    return tuple(ids)


def suffix_extras(extras: Extras, start: int) -> Extras:
    """What the tokens from `start` on need: the images after it, their pixel rows and token types
    (nothing where they hold no image). Images before `start` are in the held KV already."""
    if not extras:
        return {}
    spans = image_spans(extras)
    assert spans is not None, "a held prefix with images needs the grid layout"
    held = sum(1 for first, _ in spans if first < start)
    assert held == 0 or spans[held - 1][1] <= start, "a held prefix never ends inside an image"
    if held == len(spans):
        return {}
    grid = extras["image_grid_thw"]
    rows = int(grid[:held].prod(-1).sum())
    return {
        "pixel_values": extras["pixel_values"][rows:],
        "image_grid_thw": grid[held:],
        "mm_token_type_ids": extras["mm_token_type_ids"][:, start:],
    }


def rope_inputs(extras: Extras) -> Extras:
    """What multimodal rotary positions are computed from over the whole prompt (no pixels)."""
    return {k: v for k, v in extras.items() if k in ("image_grid_thw", "mm_token_type_ids")}
