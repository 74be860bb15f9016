"""Attachments: checked once with limits (format allow-list, pixel cap read from the header, guarded
decode), kept as the client's bytes; pixels are decoded again wherever a model needs them."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.engine.contract import ChatImage
from gateway.errors import ErrorCode, GatewayError

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF"})


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


def check_image(data: bytes, limits: ImageLimits, index: int = 0) -> ChatImage:
    """Check one attachment by decoding it fully, or raise `bad_image` / `too_large`; never trust the
    file to be honest. The pixels are dropped: history keeps the bytes, a fraction of their size."""
    return checked_decode(data, limits, index)[0]


def checked_decode(
    data: bytes, limits: ImageLimits, index: int = 0, reduce_to: int | None = None
) -> tuple[ChatImage, Image.Image]:
    """`check_image`, the decoded pixels kept. With `reduce_to`, a JPEG is decoded at the smallest scale (1/2 to 1/8,
    in grey) that still covers `reduce_to` square (Pillow's `draft`): every block of the file is still read, so a
    truncated or corrupt one fails as at full scale, for a fraction of the work. For a live frame's hash: the pixels
    a model sees are decoded again from the bytes as sent."""
    label = f"image {index}"
    if len(data) > limits.max_bytes:
        raise GatewayError(ErrorCode.TOO_LARGE, f"{label} is {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            fmt = image.format or "?"
            if fmt not in ALLOWED_FORMATS:
                raise GatewayError(ErrorCode.BAD_IMAGE, f"{label}: format {fmt} is not one of JPEG, PNG, WebP, GIF")
            width, height = image.size
            if width * height > limits.max_pixels:  # checked before any pixel is decoded
                raise GatewayError(
                    ErrorCode.TOO_LARGE,
                    f"{label} is {width}x{height} pixels; the limit is {limits.max_pixels} pixels",
                )
            if reduce_to is not None:
                image.draft("L", (reduce_to, reduce_to))
            image.load()  # a truncated or corrupt file fails here, not later in the model
            width, height = _oriented(image, (width, height))
    except GatewayError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard fires in open() for headers far beyond any sane cap
        raise GatewayError(ErrorCode.TOO_LARGE, f"{label} declares more than {limits.max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise GatewayError(ErrorCode.BAD_IMAGE, f"{label} is not a decodable JPEG, PNG, WebP or GIF image") from None
    except Exception:  # Pillow raises IndexError, struct.error, ... on damaged files: all mean corrupt
        raise GatewayError(ErrorCode.BAD_IMAGE, f"{label} is truncated or corrupt") from None
    checked = ChatImage(
        data=data, mime=f"image/{fmt.lower()}", width=width, height=height, sha256=hashlib.sha256(data).hexdigest()
    )
    return checked, image


def decode_pixels(image: ChatImage) -> Image.Image:
    """The RGB pixels of an attachment that `check_image` accepted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size was checked already
        return _normalise(Image.open(io.BytesIO(image.data)))


def _oriented(image: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """The size (as the file declares it) after EXIF orientation, without making the rotated copy (orientations 5-8
    turn 90°)."""
    width, height = size
    orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _normalise(image: Image.Image) -> Image.Image:
    """First frame, EXIF orientation applied, RGB with alpha composited on white."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of letting convert() clip to white
        return image.point(lambda v: v / 256).convert("L").convert("RGB")
    return image.convert("RGB")


IMAGE_WORKER_NICENESS = 10


def yield_cpu() -> None:
    """Run the calling (image worker) thread at a lower priority: decoding a client's big images must
    not take CPU time from the generation thread that every session waits on. Linux applies a nice
    value to the one thread named by its id; elsewhere this does nothing."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), IMAGE_WORKER_NICENESS)
    except (AttributeError, OSError):
        logging.getLogger("gateway.media.images").debug("cannot lower the image workers' priority here")
