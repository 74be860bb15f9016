"""Image tokens keyed by content, and the extras of a prompt's suffix after a held prefix."""

from __future__ import annotations

import torch

from gateway.engine.image_prefix import content_key, image_spans, suffix_extras
from gateway.engine.prompt import ModelInputs

IMAGE = 99


def grid_prompt(images: tuple[str, ...]) -> ModelInputs:
    """Text, a 2-token image (grid 1x2x4: 8 pixel rows), text, a 1-token image (1x2x2: 4 rows), text."""
    ids = torch.tensor([[1, 2, IMAGE, IMAGE, 3, 4, IMAGE, 5]])
    types = (ids == IMAGE).long()
    pixels = torch.arange(12).view(12, 1).float()
    grid = torch.tensor([[1, 2, 4], [1, 2, 2]])
    return ModelInputs(ids, {"pixel_values": pixels, "image_grid_thw": grid, "mm_token_type_ids": types}, images)


def test_image_tokens_are_keyed_by_the_picture() -> None:
    """The same placeholders with a different picture give a different key from the image on."""
    one, other = content_key(grid_prompt(("a" * 64, "b" * 64))), content_key(grid_prompt(("c" * 64, "b" * 64)))
    assert one is not None and other is not None
    assert one[:2] == other[:2] == (1, 2) and one[2] != other[2] and one[2] < 0 and one[4:6] == (3, 4)


def test_text_prompts_key_as_their_token_ids_and_unknown_layouts_are_not_keyed() -> None:
    """No images: the key is the token ids; a layout other than the grid one: no key (full prefill)."""
    assert content_key(ModelInputs(torch.tensor([[5, 6]]), {})) == (5, 6)
    odd = grid_prompt(("a" * 64, "b" * 64))
    odd.extras["image_sizes"] = torch.tensor([[2, 2]])
    assert image_spans(odd.extras) is None and content_key(odd) is None


def test_the_suffix_carries_only_the_images_after_the_held_part() -> None:
    """Held through the first image: the second image's pixel rows, grid and token types remain."""
    extras = grid_prompt(("a" * 64, "b" * 64)).extras
    assert image_spans(extras) == [(2, 4), (6, 7)]
    suffix = suffix_extras(extras, 4)
    assert suffix["pixel_values"].view(-1).tolist() == [8, 9, 10, 11]
    assert suffix["image_grid_thw"].tolist() == [[1, 2, 2]]
    assert suffix["mm_token_type_ids"].tolist() == [[0, 0, 1, 0]]
    assert suffix_extras(extras, 7) == {} and suffix_extras(extras, 1)["pixel_values"].shape[0] == 12
