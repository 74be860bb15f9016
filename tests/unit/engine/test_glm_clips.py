"""GLM-4.1V's clips told from its images: the image tokens inside a clip's start and end are the clip's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from gateway.engine.local.glm_clips import clip_aware_mask, inside_clips
from gateway.engine.local.video_layout import GlmVideoProcessing

IMAGE, START, END, TEXT = 14, 12, 13, 1
CONFIG = SimpleNamespace(image_token_id=IMAGE, video_start_token_id=START, video_end_token_id=END)


def test_tokens_between_a_clips_start_and_end_are_inside() -> None:
    """A photo's tokens before the clip are outside it; the clip's frames, and the text between them, inside."""
    ids = torch.tensor([[IMAGE, IMAGE, TEXT, START, IMAGE, TEXT, IMAGE, END, TEXT]])
    assert inside_clips(ids, START, END)[0].tolist() == [False, False, False, True, True, True, True, False, False]


def test_a_suffix_beginning_inside_a_clip_knows_it() -> None:
    """After held KV that ends inside a clip (after its start), the suffix's first marker is the end: before it is inside."""
    ids = torch.tensor([[IMAGE, TEXT, IMAGE, END, TEXT, IMAGE]])
    assert inside_clips(ids, START, END)[0].tolist() == [True, True, True, False, False, False]


def test_the_masks_split_a_prompts_image_tokens_between_photo_and_clip() -> None:
    """With a photo and a clip in one prompt, the image mask holds the photo's tokens and the video mask the clip's."""
    ids = torch.tensor([[IMAGE, IMAGE, START, IMAGE, IMAGE, IMAGE, END]])
    embeds = torch.zeros(1, 7, 4)
    mask = clip_aware_mask(CONFIG, None)
    image, video = mask(ids, embeds, image_features=torch.zeros(2, 4), video_features=torch.zeros(3, 4))
    assert image[0, :, 0].tolist() == [True, True, False, False, False, False, False]
    assert video[0, :, 0].tolist() == [False, False, False, True, True, True, False]


def test_features_of_another_count_are_refused() -> None:
    """A feature count that is not the prompt's is an error, as the model's own mask makes it."""
    ids = torch.tensor([[IMAGE, START, IMAGE, END]])
    with pytest.raises(ValueError):
        clip_aware_mask(CONFIG, None)(ids, torch.zeros(1, 4, 4), image_features=torch.zeros(2, 4))


def test_glm_sizes_a_clip_over_its_rounded_frames() -> None:
    """Five 150x100 frames under the tiny checkpoint's budget (25,088 pixels) take 56x84: the clip's count multiplies
    a frame's area (four frames where it is checked, five where it is scaled), as Glm4vVideoProcessor sizes it."""
    processing = GlmVideoProcessing.of({"size": {"shortest_edge": 6272, "longest_edge": 25088}})
    assert processing.frame_size(5, 100, 150) == (56, 84)
    assert processing.grid(5, 100, 150) == (3, 4, 6)
