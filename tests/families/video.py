"""Clips, checkpoints and video-reading chat templates for the families that read video natively (Qwen-VL, GLM-4.1V)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from gateway.engine.contract import ChatVideo
from gateway.media.video import VideoLimits, decode_video

# Qwen2-VL's own layout of a message's parts: images, then videos, each inside vision start and end.
QWEN_VL_VIDEO_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% endif %}{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# GLM-4.1V's own layout of a message's parts (the tiny checkpoint's template, with its video part).
GLM_VIDEO_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for part in m['content'] %}{% if part['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif part['type'] == 'video' %}<|begin_of_video|><|video|><|end_of_video|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
LIMITS = VideoLimits(max_bytes=1 << 24, max_pixels=1 << 22, max_duration_s=10, max_frames=8, fps=2.0)


def scene(index: int, size: tuple[int, int]) -> Image.Image:
    """A frame of a moving scene: sharp shapes on a background that brightens, so resampling is exercised."""
    image = Image.new("RGB", size, (20 + 6 * index, 60, 120))
    draw = ImageDraw.Draw(image)
    for k in range(4):
        left = 8 * k + 6 * index
        draw.ellipse([left, 5 * k, left + size[0] // 3, 5 * k + size[1] // 3], fill=(200 - 30 * k, 40 * k, 90 + 8 * index))
    return image


def clip(seconds: float = 2.0, fps: int = 8, size: tuple[int, int] = (150, 100)) -> bytes:
    """An MP4 of `scene` frames."""
    sink = io.BytesIO()
    with av.open(sink, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        for index in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.asarray(scene(index, size)), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return sink.getvalue()


def chat_video(data: bytes) -> ChatVideo:
    """A clip as the turn service hands it to the engine: decoded, sampled, its frames JPEG."""
    decoded = decode_video(data, LIMITS)
    return ChatVideo(tuple(f.image for f in decoded.frames), tuple(f.ts_ms for f in decoded.frames), decoded.sha256)


# A Qwen3-VL checkpoint ships its video processor's config (a Qwen2-VL one does not: its video processor reads
# the image processor's); the tiny fixture gets one like it, with a small budget for the whole clip.
QWEN3_VL_VIDEO_CONFIG = {
    "video_processor_type": "Qwen3VLVideoProcessor",
    "size": {"shortest_edge": 64 * 64, "longest_edge": 4 * 128 * 128},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_sample_frames": False,
}
VIDEO_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v", "glm4v_moe", "llava_onevision")


def video_template(name: str) -> str:
    """The family's chat template with its video part (LLaVA-OneVision's tiny checkpoint has one of its own)."""
    from tests.families.builders import cached_family  # not in the reference environment, which has no pytest

    if name == "llava_onevision":
        return (cached_family(name) / "chat_template.jinja").read_text()
    return GLM_VIDEO_TEMPLATE if name in ("glm4v", "glm4v_moe") else QWEN_VL_VIDEO_TEMPLATE


def video_checkpoint(name: str, scratch: Path) -> Path:
    """The family's tiny checkpoint as a real one ships it for video: Qwen3-VL's copied under `scratch` with its
    video processor's config."""
    from tests.families.builders import cached_family  # not in the reference environment, which has no pytest

    source = cached_family(name)
    if name != "qwen3_vl":
        return source
    target = scratch / source.name
    if not target.exists():
        shutil.copytree(source, target)
        (target / "video_preprocessor_config.json").write_text(json.dumps(QWEN3_VL_VIDEO_CONFIG))
    return target
