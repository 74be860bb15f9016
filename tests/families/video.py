"""Clips and a video-reading chat template for the families that read video natively (Qwen2-VL, Qwen2.5-VL)."""

from __future__ import annotations

import io

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
