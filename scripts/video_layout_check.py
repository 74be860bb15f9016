"""Run in the video reference environment (scripts/install-video-ref): the gateway's native video layout
(PIL and NumPy, engine/local/video_layout.py) against each model's own processor with its torchvision video
processor, on tiny Qwen2-VL, Qwen2.5-VL, Qwen3-VL, GLM-4.1V, GLM-4.5V and LLaVA-OneVision checkpoints, each with its
family's video-reading template. Prints one JSON object: per family, whether prompt ids, token types, grids and seconds
are equal, how far the pixels are apart, and both greedy replies.
Usage: PYTHONPATH=. REF_PYTHON scripts/video_layout_check.py MODEL_DIR:TEMPLATE..."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor
from transformers.video_utils import VideoMetadata

from gateway.engine.contract import ChatMessage, ChatVideo
from gateway.engine.local.loader import load_model
from gateway.engine.local.video_prompt import PreparedVideos
from gateway.engine.local.video_resized import ResizedVideoProcessing
from gateway.media.images import ImageLimits, check_image
from tests.families.video import chat_video, clip, scene

MAX_TOKENS = 8


def photo() -> Any:
    out = io.BytesIO()
    scene(3, (60, 40)).save(out, format="PNG")
    return check_image(out.getvalue(), ImageLimits(max_bytes=1 << 24, max_pixels=1 << 22))


def frames_of(video: ChatVideo) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(frame.data)).convert("RGB")) for frame in video.frames])


def equal(ours: dict[str, Any], expected: Any, key: str) -> bool:
    """Both hold the tensor and it is the same, or neither holds it (LLaVA-OneVision types no tokens, has no grid)."""
    if key not in ours or key not in expected:
        return key not in ours and key not in expected
    return torch.equal(ours[key], torch.as_tensor(expected[key]))


def listed(ours: dict[str, Any], key: str) -> Any:
    return ours[key].tolist() if key in ours else None


def single_frame(builder: Any, reference: Any, one_level: float) -> dict[str, Any]:
    """A one-frame clip through our layout, and through the processor: as one frame where it takes that, else (it
    refuses a clip shorter than a temporal patch) as that frame twice, the temporal patch it pads the frame to."""
    video = chat_video(clip(seconds=0.5))
    assert len(video.frames) == 1
    messages = [ChatMessage("user", "What is this?", videos=(video,))]
    ours = builder.build(messages)
    frames, taken = frames_of(video), "one frame"

    def processed(frames: np.ndarray) -> Any:
        metadata = VideoMetadata(len(frames), fps=video.sampled_fps, frames_indices=[0] * len(frames))
        text = [builder._render(messages)]
        return reference(text=text, videos=[frames], video_metadata=[metadata], do_sample_frames=False, return_tensors="pt")

    try:
        expected = processed(frames)
    except ValueError:
        expected, taken = processed(np.concatenate([frames, frames])), "the frame twice"
    pixels, reference_pixels = ours.extras["pixel_values_videos"], expected["pixel_values_videos"]
    apart = float((pixels - reference_pixels).abs().max() / one_level) if pixels.shape == reference_pixels.shape else None
    return {
        "single_frame_reference_takes": taken,
        "single_frame_input_ids_equal": torch.equal(ours.input_ids, expected["input_ids"]),
        "single_frame_video_grid_thw": listed(ours.extras, "video_grid_thw"),
        "single_frame_video_grid_thw_equal": equal(ours.extras, expected, "video_grid_thw"),
        "single_frame_pixels_max_apart_levels": apart,
    }


def compare(model_dir: str, template: str) -> dict[str, Any]:
    loaded = load_model(model_dir, device="cpu", chat_template=template)
    builder = loaded.prompt
    assert isinstance(builder.processor.video_processor, PreparedVideos)  # torchvision is here, and unused
    # LLaVA-OneVision's model takes a prompt's clips as one tensor of frames: its two clips have as many frames.
    second = 2.5 if isinstance(builder.video, ResizedVideoProcessing) else 1.5
    videos = [chat_video(clip(seconds=2.5)), chat_video(clip(seconds=second, size=(100, 150)))]
    messages = [
        ChatMessage("user", "What happens?", images=(photo(),), videos=(videos[0],)),
        ChatMessage("assistant", "A ball rolls."),
        ChatMessage("user", "And now?", videos=(videos[1],)),
    ]
    ours = builder.build(messages)
    reference = AutoProcessor.from_pretrained(model_dir)  # the checkpoint's own, its video processor included
    metadata = [VideoMetadata(len(v.frames), fps=v.sampled_fps, frames_indices=list(range(len(v.frames)))) for v in videos]
    expected = reference(
        text=[builder._render(messages)],
        images=[Image.open(io.BytesIO(messages[0].images[0].data)).convert("RGB")],
        videos=[frames_of(v) for v in videos],
        video_metadata=metadata,
        do_sample_frames=False,
        return_tensors="pt",
    )
    model = loaded.model
    extras = ours.extras
    one_level = 1 / (255 * min(builder.video.image_std))  # one uint8 step, normalized
    apart = (extras["pixel_values_videos"] - expected["pixel_values_videos"]).abs()

    def greedy(ids: torch.Tensor, tensors: dict[str, Any]) -> list[int]:
        mask = torch.ones_like(ids)
        out = model.generate(input_ids=ids, attention_mask=mask, **tensors, max_new_tokens=MAX_TOKENS, do_sample=False)
        return [int(t) for t in out[0, ids.shape[1] :]]

    reference_tensors = {k: v for k, v in expected.items() if k not in ("input_ids", "attention_mask")}
    return {
        "video_processor": type(reference.video_processor).__name__,
        "input_ids_equal": torch.equal(ours.input_ids, expected["input_ids"]),
        "mm_token_type_ids_equal": equal(extras, expected, "mm_token_type_ids"),
        "video_grid_thw": listed(extras, "video_grid_thw"),
        "video_grid_thw_equal": equal(extras, expected, "video_grid_thw"),
        "second_per_grid_ts": listed(extras, "second_per_grid_ts"),
        "second_per_grid_ts_equal": equal(extras, expected, "second_per_grid_ts"),
        "image_pixels_equal": torch.equal(extras["pixel_values"], expected["pixel_values"]),
        "video_pixels_shape_equal": extras["pixel_values_videos"].shape == expected["pixel_values_videos"].shape,
        "video_pixels_max_apart_levels": float(apart.max() / one_level),
        "video_pixels_share_apart": float((apart > 1e-5).float().mean()),
        "prompt_tokens": ours.prompt_tokens,
        "greedy_ours": greedy(ours.input_ids, extras),
        "greedy_reference": greedy(expected["input_ids"], reference_tensors),
    } | single_frame(builder, reference, one_level)


if __name__ == "__main__":
    pairs = [argument.rsplit(":", 1) for argument in sys.argv[1:]]
    report = {Path(model).name.split("-v")[0]: compare(model, template) for model, template in pairs}
    print(json.dumps(report | {"torch": torch.__version__}))
