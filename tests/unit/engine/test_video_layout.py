"""Qwen-VL's video layout in PIL and NumPy: sizes, grids, token counts and where each pixel lands."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gateway.engine.contract import ChatVideo
from gateway.engine.local.video_layout import Qwen3VideoProcessing, QwenVideoProcessing, smart_resize

TINY = QwenVideoProcessing.of({"size": {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}})


def frames(count: int, width: int = 112, height: int = 84) -> list[Image.Image]:
    return [Image.new("RGB", (width, height), (10 * i, 20, 30)) for i in range(count)]


def test_config_reads_pixels_over_size() -> None:
    """`min_pixels`/`max_pixels` win over `size`, as the processor class reads a checkpoint's config."""
    processing = QwenVideoProcessing.of({"size": {"shortest_edge": 1, "longest_edge": 2}, "min_pixels": 3136, "max_pixels": 6272})
    assert (processing.min_pixels, processing.max_pixels) == (3136, 6272)


def test_defaults_are_the_class_defaults() -> None:
    """An empty config is Qwen2VLVideoProcessor's own defaults."""
    assert QwenVideoProcessing.of({}) == QwenVideoProcessing()


def test_sides_are_whole_merged_patches_within_the_budget() -> None:
    """A resized frame's sides are multiples of 28 and its area stays under the maximum."""
    height, width = smart_resize(480, 640, 28, 56 * 56, 112 * 112)
    assert height % 28 == 0 and width % 28 == 0 and height * width <= 112 * 112


def test_an_odd_frame_count_repeats_the_last_frame() -> None:
    """Five frames make three temporal patches, the last holding the fifth frame twice."""
    pixels, grid = TINY.pixels(frames(5))
    assert grid == (3, 6, 8) and pixels.shape == (3 * 6 * 8, 3 * 2 * 14 * 14)
    last = pixels[-1].reshape(3, 2, 14, 14)
    assert bool((last[:, 0] == last[:, 1]).all())


def test_tokens_count_merged_patches() -> None:
    """One video token per 2x2 merged patch of each temporal patch, as the grid says."""
    assert TINY.tokens(4, 84, 112) == 2 * 6 * 8 // 4


def test_a_patch_holds_its_two_frames_in_time_order() -> None:
    """A temporal patch's channels hold its first frame's pixels, then its second's."""
    pixels, _ = TINY.pixels(frames(2))
    red = pixels[0].reshape(3, 2, 14, 14)[0]
    assert float(red[0].mean()) < float(red[1].mean())


def test_merged_patches_are_contiguous() -> None:
    """A 2x2 block of patches is four consecutive rows: the merger reads them together."""
    image = np.zeros((84, 112, 3), np.uint8)
    image[:28, :28] = 255  # exactly the first merged block
    pixels, _ = TINY.pixels([Image.fromarray(image)] * 2)
    bright = (pixels.mean(dim=1) > 0).nonzero().flatten().tolist()
    assert bright == [0, 1, 2, 3]


@pytest.mark.parametrize(("ts_ms", "fps"), [([0, 500, 1000], 2.0), ([0, 250], 4.0), ([0], 2.0)])
def test_sampled_fps_reads_the_frames_times(ts_ms: list[int], fps: float) -> None:
    """A clip's rate is its frames over their span; a single frame gets 2 (it has no spacing to time)."""
    assert ChatVideo((), tuple(ts_ms), "").sampled_fps == fps


QWEN3 = Qwen3VideoProcessing.of({"size": {"shortest_edge": 64 * 64, "longest_edge": 4 * 128 * 128}})


def test_qwen3_budgets_the_whole_clip() -> None:
    """Qwen3-VL's budget is the clip's: more frames make each frame smaller, in whole 32-pixel merged patches."""
    few, many = QWEN3.frame_size(2, 480, 640), QWEN3.frame_size(8, 480, 640)
    assert many[0] * many[1] < few[0] * few[1]
    assert all(side % 32 == 0 for side in (*few, *many))


def test_qwen3_sizes_a_single_frame_as_its_temporal_patch() -> None:
    """A one-frame clip (a still live window), which the processor refuses, is sized as the two-frame patch
    its frame is repeated into."""
    assert QWEN3.frame_size(1, 100, 150) == QWEN3.frame_size(2, 100, 150)
    pixels, grid = QWEN3.pixels(frames(1))
    assert grid[0] == 1 and pixels.shape[1] == 3 * 2 * 16 * 16
