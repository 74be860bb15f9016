"""A clip's frames laid out as LLaVA-OneVision's own video processor lays them out, in PIL and NumPy (no torchvision)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from gateway.engine.local.video_layout import normalized

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ResizedVideoProcessing:
    """What `LlavaOnevisionVideoProcessor` does to a clip: every frame resized with bicubic resampling to one size,
    whatever its aspect, rescaled and normalized, and the frames stacked ([1, frames, channels, height, width]); the
    model pools each frame's features and ends the clip with a newline. The defaults are the class's own; a
    checkpoint's video (else image) preprocessor config overrides them."""

    height: int = 384
    width: int = 384
    image_mean: tuple[float, ...] = _CLIP_MEAN
    image_std: tuple[float, ...] = _CLIP_STD
    rescale_factor: float = 1 / 255

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> ResizedVideoProcessing:
        """The processing a preprocessor config describes (its `size`'s height and width)."""
        size = config.get("size") or {}
        values: dict[str, Any] = {key: size[key] for key in ("height", "width") if size.get(key) is not None}
        values |= {key: tuple(config[key]) for key in ("image_mean", "image_std") if config.get(key) is not None}
        if config.get("rescale_factor") is not None:
            values["rescale_factor"] = config["rescale_factor"]
        return cls(**values)

    def laid_out(self, frames: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """The clip's tensors as the processor outputs them for a prompt of this one clip."""
        size = (self.height, self.width)
        stacked = np.stack([normalized(frame, size, self.image_mean, self.image_std, self.rescale_factor) for frame in frames])
        return {"pixel_values_videos": torch.from_numpy(stacked)[None]}


def clip_tokens(total: int, frames: Sequence[int]) -> list[int]:
    """Each clip's video tokens where a prompt's `total` are its clips' frames times a frame's pooled tokens, plus
    one newline per clip, as LLaVA-OneVision's processor writes them (the pooled count is the model's)."""
    per_frame, extra = divmod(total - len(frames), sum(frames)) if sum(frames) else (0, 1)
    return [count * per_frame + 1 for count in frames] if not extra else []
