"""LLaVA-OneVision's video layout in PIL and NumPy: frames resized whole, and each clip's share of the prompt's tokens."""

from __future__ import annotations

from PIL import Image

from gateway.engine.local.video_resized import ResizedVideoProcessing, clip_tokens


def test_config_sets_the_frame_size_and_normalization() -> None:
    """A checkpoint's `size` and mean override the class's 384x384 and CLIP mean."""
    processing = ResizedVideoProcessing.of({"size": {"height": 28, "width": 56}, "image_mean": [0.5, 0.5, 0.5]})
    assert (processing.height, processing.width, processing.image_mean) == (28, 56, (0.5, 0.5, 0.5))
    assert ResizedVideoProcessing.of({}) == ResizedVideoProcessing()


def test_every_frame_is_resized_whole_to_one_size() -> None:
    """Frames of any aspect become [1, frames, 3, height, width]: no grid, no temporal patches."""
    frames = [Image.new("RGB", (150, 100), (10 * i, 20, 30)) for i in range(3)]
    laid_out = ResizedVideoProcessing(height=28, width=28).laid_out(frames)
    assert list(laid_out) == ["pixel_values_videos"] and laid_out["pixel_values_videos"].shape == (1, 3, 3, 28, 28)


def test_each_clip_takes_its_frames_pooled_tokens_and_a_newline() -> None:
    """Clips of 5 and 3 frames at 4 pooled tokens a frame take 21 and 13 of the prompt's 34 video tokens."""
    assert clip_tokens(34, [5, 3]) == [21, 13]


def test_a_count_that_does_not_divide_places_nothing() -> None:
    """A prompt's video tokens that are no whole number of pooled frames place no clip (the layout is dropped)."""
    assert clip_tokens(35, [5, 3]) == []
