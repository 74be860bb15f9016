"""A clip's frames laid out as Qwen-VL's and GLM-4.1V's own video processors lay them out, in PIL and NumPy (no torchvision)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MAX_ASPECT = 200  # the processor refuses frames more elongated than this


@dataclass(frozen=True)
class QwenVideoProcessing:
    """What `Qwen2VLVideoProcessor` does to a clip (Qwen2-VL and Qwen2.5-VL share it): each frame resized
    with bicubic resampling to whole merged patches under a pixel budget, rescaled and normalized, and
    every `temporal_patch_size` frames (the last repeated to fill) flattened into one temporal patch.
    The defaults are the class's own; a checkpoint's video (else image) preprocessor config overrides them."""

    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 28 * 28 * 768
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = _CLIP_MEAN
    image_std: tuple[float, ...] = _CLIP_STD
    rescale_factor: float = 1 / 255
    # The total-video pixel budget of qwen-vl-utils: off unless the config says so, as in the class.
    cap_pixels_per_frame: bool = False
    max_video_tokens: int = 128000

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> QwenVideoProcessing:
        """The processing a preprocessor config describes, as the class reads it (`min_pixels`/`max_pixels`
        over `size`'s `shortest_edge`/`longest_edge`)."""
        size = config.get("size") or {}
        values = {f.name: config[f.name] for f in fields(cls) if config.get(f.name) is not None}
        values.setdefault("min_pixels", size.get("shortest_edge", cls.min_pixels))
        values.setdefault("max_pixels", size.get("longest_edge", cls.max_pixels))
        for key in ("image_mean", "image_std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    @property
    def factor(self) -> int:
        """A resized frame's sides are multiples of this: whole merged patches."""
        return self.patch_size * self.merge_size

    def frame_size(self, frames: int, height: int, width: int) -> tuple[int, int]:
        """The (height, width) every frame of a clip of `frames` frames of this size is resized to."""
        max_pixels = self.max_pixels
        if self.cap_pixels_per_frame:
            total = int(self.max_video_tokens * self.factor * self.factor * 0.9)
            max_pixels = max(min(max_pixels, total * self.temporal_patch_size // frames), int(self.min_pixels * 1.05))
        return smart_resize(height, width, self.factor, self.min_pixels, max_pixels)

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The clip's (temporal, height, width) grid of patches."""
        resized_height, resized_width = self.frame_size(frames, height, width)
        return -(-frames // self.temporal_patch_size), resized_height // self.patch_size, resized_width // self.patch_size

    def tokens(self, frames: int, height: int, width: int) -> int:
        """The clip's video placeholder tokens: one per merged patch of each temporal patch."""
        t, h, w = self.grid(frames, height, width)
        return t * h * w // self.merge_size**2

    def pixels(self, frames: Sequence[Image.Image]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """The clip's flattened patches ([patches, channels * temporal * patch * patch]) and its grid. Every
        frame is resized to the size the first frame's gives (a stream that changes size mid-clip is rare)."""
        height, width = frames[0].height, frames[0].width
        size = self.frame_size(len(frames), height, width)
        stacked = np.stack([self._normalized(frame, size) for frame in frames])
        if pad := -len(frames) % self.temporal_patch_size:
            stacked = np.concatenate([stacked, np.repeat(stacked[-1:], pad, axis=0)])
        return torch.from_numpy(self._patchify(stacked)), self.grid(len(frames), height, width)

    def laid_out(self, frames: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """The clip's tensors as the processor outputs them for a prompt of this one clip."""
        pixels, grid = self.pixels(frames)
        return {"pixel_values_videos": pixels, "video_grid_thw": torch.tensor([grid])}

    def _normalized(self, frame: Image.Image, size: tuple[int, int]) -> np.ndarray:
        return normalized(frame, size, self.image_mean, self.image_std, self.rescale_factor)

    def _patchify(self, video: np.ndarray) -> np.ndarray:
        frames, channels, height, width = video.shape
        t, p, m = self.temporal_patch_size, self.patch_size, self.merge_size
        grid_t, grid_h, grid_w = frames // t, height // p, width // p
        patches = video.reshape(grid_t, t, channels, grid_h // m, m, p, grid_w // m, m, p)
        # Merged patches together (each 2x2 block's patches in a row), a patch's time steps inside its channels.
        patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return np.ascontiguousarray(patches.reshape(grid_t * grid_h * grid_w, channels * t * p * p))


@dataclass(frozen=True)
class Qwen3VideoProcessing(QwenVideoProcessing):
    """What `Qwen3VLVideoProcessor` does: Qwen2-VL's layout with 16-pixel patches, a mean and deviation of 0.5,
    and a pixel budget for the whole clip (its frames times a frame's area), a frame under one merged patch
    first scaled up to it. (The processor's timestamps before each temporal patch are the processor's own.)"""

    min_pixels: int = 128 * 32 * 32
    max_pixels: int = 32 * 32 * 768
    patch_size: int = 16
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    max_video_tokens: int = 768

    def frame_size(self, frames: int, height: int, width: int) -> tuple[int, int]:
        max_pixels = self.max_pixels
        if self.cap_pixels_per_frame:
            per_frame = max(min(self.max_video_tokens * self.factor**2, max_pixels // frames), int(self.min_pixels * 1.05))
            max_pixels = per_frame * frames
        # The processor refuses a clip shorter than a temporal patch; it is sized as the patch it is repeated to, as
        # the processor sizes the frame given twice (tests/e2e/test_video_ref_layout.py).
        frames = max(frames, self.temporal_patch_size)
        if height < self.factor or width < self.factor:
            scale = max(self.factor / height, self.factor / width)
            height, width = int(height * scale), int(width * scale)
        t_bar = round(frames / self.temporal_patch_size) * self.temporal_patch_size
        return smart_resize(height, width, self.factor, self.min_pixels, max_pixels, (frames, t_bar))


@dataclass(frozen=True)
class GlmVideoProcessing(Qwen3VideoProcessing):
    """What GLM-4.1V's `Glm4vVideoProcessor` does: Qwen3-VL's sizing of a clip (its frames multiply a frame's area,
    a frame under one merged patch scaled up first) with Qwen2-VL's 14-pixel patches and CLIP's mean and deviation,
    and no budget for the whole clip. (The processor writes each temporal patch's whole seconds after its frame.)"""

    min_pixels: int = 112 * 112
    max_pixels: int = 28 * 28 * 2 * 30000
    patch_size: int = 14
    image_mean: tuple[float, ...] = _CLIP_MEAN
    image_std: tuple[float, ...] = _CLIP_STD


def normalized(
    frame: Image.Image, size: tuple[int, int], mean: Sequence[float], std: Sequence[float], rescale_factor: float
) -> np.ndarray:
    """A frame resized to `size` (height, width) with bicubic resampling, rescaled and normalized, channels first."""
    # Two passes, across then down, as torchvision resizes a uint8 frame (rounding to uint8 between them):
    # PIL's one-call resize goes down first where one side shrinks and the other grows, and then differs
    # by up to ten levels at sharp edges; in this order the two agree within a level.
    rgb = frame.convert("RGB")
    across = rgb.resize((size[1], rgb.height), Image.Resampling.BICUBIC)
    resized = across.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    channels_first = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1)
    # The processor fuses rescaling into normalizing: (x - mean / scale) / (std / scale), in float32.
    scaled_mean = np.asarray(mean, np.float32)[:, None, None] / np.float32(rescale_factor)
    scaled_std = np.asarray(std, np.float32)[:, None, None] / np.float32(rescale_factor)
    result: np.ndarray = (channels_first - scaled_mean) / scaled_std
    return result


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int, frames: tuple[int, int] = (1, 1)
) -> tuple[int, int]:
    """Qwen's rule: sides rounded to multiples of `factor`, the area scaled into [min_pixels, max_pixels].
    Qwen3-VL budgets the clip: `frames` (its frame count, and that rounded to whole temporal patches) multiply
    the area, the rounded count where it is checked, the count where it is scaled, as its processor does."""
    if max(height, width) / min(height, width) > _MAX_ASPECT:
        raise ValueError(f"absolute aspect ratio must be smaller than {_MAX_ASPECT}")
    count, rounded = frames
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if rounded * h_bar * w_bar > max_pixels:
        beta = math.sqrt((count * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif rounded * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (count * height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def video_metadata(ts_ms: Sequence[int], fps: float) -> Any:
    """What a processor reads of a clip's metadata: its frames were sampled at `fps` (Qwen2.5-VL's
    `second_per_grid_ts` is the temporal patch over it), each at its time (GLM-4.1V writes them in the prompt)."""
    indices = list(range(len(ts_ms)))
    timestamps = [ts / 1000 for ts in ts_ms]
    return SimpleNamespace(sampled_fps=fps, fps=fps, total_num_frames=len(ts_ms), frames_indices=indices, timestamps=timestamps)
