"""Run in the video reference environment (scripts/install-video-ref): torchvision works on the CPU, and a
clip decoded by gateway.media.video goes through a Qwen2-VL checkpoint's own video processor, prompt and
greedy `generate`. Prints one JSON object. Usage: PYTHONPATH=. REF_PYTHON scripts/video_ref_check.py MODEL_DIR"""

from __future__ import annotations

import io
import json
import sys
import time
from typing import Any

import av
import numpy as np
import torch
import torchvision
from PIL import Image
from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, Qwen2VLVideoProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from gateway.media.video import VideoLimits, decode_video

PROMPT = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens?<|im_end|>\n<|im_start|>assistant\n"


def clip(seconds: float = 2.0, fps: int = 8, size: tuple[int, int] = (112, 84)) -> bytes:
    """An MP4 whose frames brighten over time."""
    sink = io.BytesIO()
    with av.open(sink, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        for index in range(round(seconds * fps)):
            pixels = np.full((size[1], size[0], 3), 10 * index, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return sink.getvalue()


def main(model_dir: str) -> dict[str, Any]:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
    kept = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()
    decoded = decode_video(clip(), VideoLimits(max_bytes=1 << 24, max_pixels=1 << 22, max_duration_s=10, max_frames=8, fps=2.0))
    frames = np.stack([np.asarray(Image.open(io.BytesIO(frame.image.data)).convert("RGB")) for frame in decoded.frames])
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
    video_processor = Qwen2VLVideoProcessor(
        patch_size=14, temporal_patch_size=2, merge_size=2, size=dict(image_processor.size), cap_pixels_per_frame=True
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor)
    inputs = processor(text=[PROMPT], videos=[frames], return_tensors="pt", do_sample_frames=False)
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir).eval()
    started = time.perf_counter()
    replies = [
        model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1] :].tolist() for _ in range(2)
    ]
    video_token = model.config.video_token_id
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda_available": torch.cuda.is_available(),
        "nms_kept": kept,
        "frames": len(decoded.frames),
        "frame_ts_ms": [frame.ts_ms for frame in decoded.frames],
        "video_grid_thw": inputs["video_grid_thw"].tolist(),
        "video_tokens": int((inputs["input_ids"] == video_token).sum()),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "greedy_replies": replies,
        "generate_s": round(time.perf_counter() - started, 2),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
