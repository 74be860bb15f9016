"""The start-up check that decides `vision`: one image prompt built and run through the model."""

from __future__ import annotations

import io
import logging

import torch
from PIL import Image

from gateway.engine.contract import ChatMessage
from gateway.engine.local.loader import LoadedModel
from gateway.engine.local.model_inputs import model_extras
from gateway.media.images import ImageLimits, check_image

log = logging.getLogger("gateway.engine")

_PROBE_SIZE = (64, 48)  # small, and not square: some processors only fail on real aspect ratios


def probe_image_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", _PROBE_SIZE, (120, 60, 200)).save(buffer, "PNG")
    return buffer.getvalue()


@torch.inference_mode()
def probe_vision(loaded: LoadedModel) -> str | None:
    """None when a one-image prompt builds and prefills; otherwise why not, in a few words."""
    image = check_image(probe_image_bytes(), ImageLimits(max_bytes=1 << 20, max_pixels=1 << 20))
    messages = [ChatMessage("user", "probe", (image,))]
    try:
        inputs = loaded.prompt.build(messages)
        extras = model_extras(inputs.extras, loaded.device, loaded.dtype)
        loaded.model(input_ids=inputs.input_ids.to(loaded.device), use_cache=False, **extras)
    except Exception as exc:  # any failure means images cannot be served; the reason goes to the log
        log.debug("vision probe failed", exc_info=True)
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None
