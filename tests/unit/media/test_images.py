"""Tests for gateway.media.images: allowed formats, limits checked from the header, and RGB normalisation."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from gateway.errors import ErrorCode, GatewayError
from gateway.media.images import ImageLimits, check_image, checked_decode, decode_pixels

LIMITS = ImageLimits(max_bytes=5_000_000, max_pixels=4_000_000)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def solid(fmt: str, size: tuple[int, int] = (32, 24), color: Any = (200, 30, 30), mode: str = "RGB") -> bytes:
    return encode(Image.new(mode, size, color), fmt)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height but whose pixel data is garbage: only a header reader survives it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"garbage") + png_chunk(b"IEND", b"")


def decode_error(data: bytes, limits: ImageLimits = LIMITS) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        check_image(data, limits)
    return info.value


# ---- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "name"), [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif")])
def test_allowed_formats_are_decoded(fmt: str, name: str) -> None:
    """JPEG, PNG, WebP and GIF decode to RGB pixels of the right size, with a lower-case format name."""
    image = check_image(solid(fmt), LIMITS)
    pixels = decode_pixels(image)
    assert (image.format, image.width, image.height, pixels.mode) == (name, 32, 24, "RGB")
    assert pixels.size == (32, 24)


def test_decoded_image_keeps_bytes_and_hash() -> None:
    """The decoded image keeps the original bytes and their SHA-256."""
    data = solid("PNG")
    image = check_image(data, LIMITS)
    assert image.data == data and image.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "PPM", "ICO"])
def test_other_formats_are_refused(fmt: str) -> None:
    """Formats outside the allow-list (BMP, TIFF, ...) are refused as bad_image."""
    assert decode_error(solid(fmt)).code is ErrorCode.BAD_IMAGE


@pytest.mark.parametrize("data", [b"", b"hello, world", b"\x00" * 100, b"%PDF-1.4\n"], ids=["empty", "text", "zeros", "pdf"])
def test_non_image_bytes_are_refused(data: bytes) -> None:
    """Bytes that are not an image at all are refused as bad_image."""
    assert decode_error(data).code is ErrorCode.BAD_IMAGE


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_refused(fmt: str) -> None:
    """An image cut off halfway through its pixel data is refused as bad_image."""
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), fmt)
    assert decode_error(data[: len(data) // 2]).code is ErrorCode.BAD_IMAGE


def test_png_with_corrupt_pixel_data_is_refused() -> None:
    """A PNG with a valid small header but corrupt pixel data is refused as bad_image."""
    assert decode_error(png_header_only(8, 8)).code is ErrorCode.BAD_IMAGE


# ---- limits ------------------------------------------------------------------------------------


def test_bytes_above_the_cap_are_too_large() -> None:
    """An attachment longer than max_bytes is refused as too_large before it is parsed."""
    data = solid("PNG")
    assert decode_error(data, ImageLimits(max_bytes=len(data) - 1, max_pixels=10**6)).code is ErrorCode.TOO_LARGE


def test_bytes_at_the_cap_are_accepted() -> None:
    """An attachment of exactly max_bytes is accepted."""
    data = solid("PNG")
    assert check_image(data, ImageLimits(max_bytes=len(data), max_pixels=10**6)).width == 32


def test_pixels_above_the_cap_are_too_large() -> None:
    """An image with more pixels than max_pixels is refused as too_large."""
    assert decode_error(solid("PNG"), ImageLimits(max_bytes=10**6, max_pixels=32 * 24 - 1)).code is ErrorCode.TOO_LARGE


def test_pixels_at_the_cap_are_accepted() -> None:
    """An image of exactly max_pixels is accepted."""
    assert check_image(solid("PNG"), ImageLimits(max_bytes=10**6, max_pixels=32 * 24)).height == 24


def test_pixel_cap_is_checked_from_the_header_before_decoding() -> None:
    """A header declaring too many pixels is too_large even when the pixel data is garbage (never decoded)."""
    assert decode_error(png_header_only(5000, 5000)).code is ErrorCode.TOO_LARGE


def test_cheap_large_png_is_too_large() -> None:
    """A small file (1-bit, optimised) declaring 5000x5000 pixels is refused as too_large."""
    data = encode(Image.new("1", (5000, 5000)), "PNG", optimize=True)
    assert len(data) < 10_000
    assert decode_error(data).code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize(("width", "height"), [(20000, 20000), (10000, 10000)])
def test_huge_declared_size_is_too_large(width: int, height: int) -> None:
    """A header declaring far more pixels than Pillow's bomb limit is still too_large, not bad_image."""
    assert decode_error(png_header_only(width, height)).code is ErrorCode.TOO_LARGE


# ---- normalisation -----------------------------------------------------------------------------


def test_animated_gif_gives_its_first_frame() -> None:
    """An animated GIF decodes to its first frame."""
    frames = [Image.new("RGB", (16, 16), color) for color in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert decode_pixels(check_image(data, LIMITS)).getpixel((8, 8)) == (255, 0, 0)


def test_animated_webp_gives_its_first_frame() -> None:
    """An animated WebP decodes to its first frame."""
    frames = [Image.new("RGB", (16, 16), color) for color in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50, lossless=True)
    assert decode_pixels(check_image(data, LIMITS)).getpixel((8, 8)) == (255, 0, 0)


def test_rgba_is_composited_on_white() -> None:
    """Transparent pixels become white and opaque ones keep their colour, in an RGB image."""
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.putpixel((0, 0), (0, 0, 255, 255))
    pixels = decode_pixels(check_image(encode(image, "PNG"), LIMITS))
    assert pixels.mode == "RGB"
    assert (pixels.getpixel((0, 0)), pixels.getpixel((2, 2))) == ((0, 0, 255), (255, 255, 255))


def test_transparent_gif_is_composited_on_white() -> None:
    """A palette GIF's transparent colour becomes white."""
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    data = encode(image, "GIF", transparency=1)
    assert decode_pixels(check_image(data, LIMITS)).getpixel((1, 1)) == (255, 255, 255)


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    """A CMYK JPEG becomes RGB with its colours (magenta stays magenta)."""
    data = solid("JPEG", color=(0, 255, 0, 0), mode="CMYK")
    pixels = decode_pixels(check_image(data, LIMITS))
    assert pixels.mode == "RGB" and pixels.getpixel((4, 4)) == (255, 0, 255)


def test_greyscale_png_is_converted_to_rgb() -> None:
    """An 8-bit greyscale PNG becomes RGB with equal channels."""
    pixels = decode_pixels(check_image(solid("PNG", color=77, mode="L"), LIMITS))
    assert pixels.mode == "RGB" and pixels.getpixel((0, 0)) == (77, 77, 77)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    """A 16-bit greyscale PNG (mode I;16) is scaled to 8 bits: mid-grey stays mid-grey, not white."""
    data = solid("PNG", color=30000, mode="I;16")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    pixels = decode_pixels(check_image(data, LIMITS))
    assert pixels.mode == "RGB" and pixels.getpixel((0, 0)) == (117, 117, 117)


def test_16_bit_png_keeps_its_gradient() -> None:
    """A 16-bit gradient keeps distinct dark and light values after conversion."""
    image = Image.new("I;16", (256, 1))
    image.putdata([v * 256 for v in range(256)])
    pixels = decode_pixels(check_image(encode(image, "PNG"), LIMITS))
    assert (pixels.getpixel((0, 0)), pixels.getpixel((128, 0)), pixels.getpixel((255, 0))) == (
        (0, 0, 0),
        (128, 128, 128),
        (255, 255, 255),
    )


def test_exif_rotated_jpeg_is_transposed() -> None:
    """A JPEG with EXIF orientation 6 (rotate 90) comes out with width and height swapped."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.new("RGB", (40, 20), (0, 128, 0)), "JPEG", exif=exif.tobytes())
    image = check_image(data, LIMITS)
    assert (image.width, image.height) == (20, 40)
    assert decode_pixels(image).size == (20, 40)


def test_error_message_names_the_image_index() -> None:
    """The error message names which attachment failed."""
    with pytest.raises(GatewayError) as info:
        check_image(b"not an image", LIMITS, index=3)
    assert "image 3" in info.value.message


# ---- a live frame's reduced decode -------------------------------------------------------------


def test_a_reduced_decode_checks_a_jpeg_as_the_full_one_does() -> None:
    """A JPEG checked at a reduced scale is the same image (size, hash, bytes as sent), decoded at 1/8 scale, in grey."""
    data = encode(Image.new("RGB", (640, 480), (90, 140, 200)), "JPEG")
    image, pixels = checked_decode(data, LIMITS, reduce_to=32)
    full = check_image(data, LIMITS)
    assert (image.data, image.mime, image.width, image.height, image.sha256) == (data, full.mime, 640, 480, full.sha256)
    assert pixels.size == (80, 60) and pixels.mode == "L"


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_a_reduced_decode_still_refuses_a_truncated_jpeg(keep: float) -> None:
    """Every block is still read at a reduced scale: a truncated JPEG is `bad_image`, as at full scale."""
    data = encode(Image.effect_noise((640, 480), 60).convert("RGB"), "JPEG")
    with pytest.raises(GatewayError) as info:
        checked_decode(data[: int(len(data) * keep)], LIMITS, reduce_to=32)
    assert info.value.code is ErrorCode.BAD_IMAGE
