"""A prompt's clips laid out natively, handed to the model's own processor in place of its torchvision video processor."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gateway.engine.contract import ChatVideo
from gateway.engine.local.families import Family
from gateway.engine.local.image_layout import ImageLayout, Stacked, image_spans
from gateway.engine.local.video_layout import GlmVideoProcessing, Qwen3VideoProcessing, QwenVideoProcessing, video_metadata
from gateway.engine.local.video_resized import ResizedVideoProcessing, clip_tokens
from gateway.errors import ErrorCode, GatewayError
from gateway.media.images import decode_pixels

VideoProcessing = QwenVideoProcessing | ResizedVideoProcessing

# What the processor is handed in place of a clip already processed: one 1x1 frame, channels last.
_STAND_IN = np.zeros((1, 1, 1, 3), np.uint8)
_PROCESSING: dict[str, type[VideoProcessing]] = {
    "qwen2_vl": QwenVideoProcessing,
    "qwen3_vl": Qwen3VideoProcessing,
    "glm4v": GlmVideoProcessing,
    "llava_onevision": ResizedVideoProcessing,
}
_VIDEO_TYPE = 2  # how processors type a clip's tokens in `mm_token_type_ids` (1: an image's)


def video_processing(source: Path, family: Family) -> VideoProcessing | None:
    """How the checkpoint's video processor processes a clip, where the family lays videos out natively:
    its video preprocessor config, else its image preprocessor config (as transformers falls back)."""
    if family.video is None:
        return None
    processing = _PROCESSING[family.video]
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if (source / name).exists():
            config = json.loads((source / name).read_text())
            return processing.of(config if isinstance(config, dict) else {})
    return processing()


class PreparedVideos:
    """Stands in for a processor's video processor: hands back the features of the prompt's clips, laid out
    ahead, so the processor only expands each video's placeholder, types its tokens and tokenizes."""

    def __init__(self, processing: VideoProcessing, video_token_id: int) -> None:
        self.processing = processing
        self.video_token_id = video_token_id
        # What Qwen-VL's and GLM-4.1V's processors read of their video processor while expanding placeholders.
        self.merge_size = getattr(processing, "merge_size", 1)
        self.temporal_patch_size = getattr(processing, "temporal_patch_size", 1)
        self.patch_size = getattr(processing, "patch_size", 1)
        self.features: dict[str, Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        assert self.features is not None, "PreparedVideos called without prepared features"
        return self.features

    def lay_out(self, video: ChatVideo) -> dict[str, torch.Tensor]:
        """One clip's tensors: its patches and grid, or its frames (for the clip cache: a history's clips are laid
        out once)."""
        return self.processing.laid_out([decode_pixels(frame) for frame in video.frames])

    def prepare(self, videos: Sequence[ChatVideo], laid_out: Sequence[dict[str, torch.Tensor]]) -> list[np.ndarray]:
        """The prompt's clips, laid out, for the processor; the stand-ins to hand it in their place."""
        if len({clip["pixel_values_videos"].shape[1:] for clip in laid_out}) > 1:
            # LLaVA-OneVision's model takes a prompt's clips as one tensor of frames, as its processor stacks them.
            raise GatewayError(ErrorCode.BAD_VIDEO, "the served model reads a prompt's videos only with as many frames each")
        self.features = {key: torch.cat([clip[key] for clip in laid_out]) for key in laid_out[0]}
        self.features["video_metadata"] = [video_metadata(v.ts_ms, v.sampled_fps) for v in videos]
        return [_STAND_IN] * len(videos)

    def placed(
        self, layout: ImageLayout, input_ids: list[int], extras: dict[str, torch.Tensor], videos: Sequence[ChatVideo]
    ) -> ImageLayout | None:
        """`layout` with where each clip sits: its video-typed tokens (one per merged patch of each temporal patch;
        GLM-4.1V's are image tokens, its frames' times between them) and its rows of the clip tensors, keyed by its
        sha256 and times, so held KV ending before a clip, or after it, serves a later prompt. None where the counts disagree
        with the prompt's."""
        kinds = extras.get("mm_token_type_ids")
        typed = input_ids if kinds is None else [_VIDEO_TYPE if kind == _VIDEO_TYPE else -1 for kind in kinds[0].tolist()]
        marks = {self.video_token_id} if kinds is None else {_VIDEO_TYPE}
        one_each = Stacked(0, (1,) * len(videos))
        if "video_grid_thw" in extras:
            patches = [int(grid.prod()) for grid in extras["video_grid_thw"]]
            counts = [n // self.merge_size**2 for n in patches]
            rows = {"pixel_values_videos": Stacked(0, tuple(patches)), "video_grid_thw": one_each}
        else:  # LLaVA-OneVision: a clip is a row of frames
            counts = clip_tokens(sum(kind in marks for kind in typed), [len(video.frames) for video in videos])
            rows = {"pixel_values_videos": one_each}
        spans = image_spans(typed, marks, counts)
        if spans is None or len(spans) != len(videos):
            return None
        rows |= {"second_per_grid_ts": one_each} if "second_per_grid_ts" in extras else {}
        # The frames' times too: the same frames seen at other times (a live window's) are another clip where the
        # prompt writes them (Qwen3-VL, GLM-4.1V) or rotary positions are spaced by them (Qwen2.5-VL).
        keys = tuple(f"{video.sha256}:{','.join(map(str, video.ts_ms))}:video" for video in videos)
        return replace(layout, videos=spans, video_keys=keys, video_stacked=rows)


def without_clips(input_ids: list[int], extras: dict[str, torch.Tensor]) -> list[int]:
    """The prompt's ids with its clips' tokens blanked (-1): GLM-4.1V's clips are image tokens, which are not
    the prompt's images."""
    kinds = extras.get("mm_token_type_ids")
    if kinds is None or "video_grid_thw" not in extras:
        return input_ids
    return [-1 if kind == _VIDEO_TYPE else token for token, kind in zip(input_ids, kinds[0].tolist())]


def renders_clips(template: str | None, tokenizer: Any, processor: Any) -> bool:
    """Whether the chat template writes a video part's placeholder: a template that drops it (the demo's, a
    fixture's) cannot take a clip, so the model reads videos as their frames."""
    token = getattr(processor, "video_token", None)
    if token is None or template is None:
        return False
    chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": ""}]}]
    try:
        rendered = tokenizer.apply_chat_template(chat, chat_template=template, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that fails on a video part cannot take one either
        return False
    return token in str(rendered)
