"""Tests for gateway.media.video: real MP4, WebM and GIF clips made on the spot with PyAV, sampled under limits."""

from __future__ import annotations

import hashlib
import io
from itertools import pairwise
from typing import Any

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from gateway.errors import ErrorCode, GatewayError
from gateway.media import video
from gateway.media.video import DecodedVideo, VideoLimits, decode_video

LIMITS = VideoLimits(max_bytes=5_000_000, max_pixels=1_000_000, max_duration_s=30.0, max_frames=8, fps=2.0)
SHADE_STEP = 8  # frame i is a flat grey picture of level i * SHADE_STEP, so a sample shows which frame it was


class Unseekable(io.RawIOBase):
    """A sink without seek: muxers cannot go back to write the length, as in a browser's MediaRecorder WebM."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.buffer += bytes(data)
        return len(data)


def clip(
    fmt: str = "mp4",
    codec: str = "libx264",
    seconds: float = 3.0,
    fps: int = 10,
    size: tuple[int, int] = (64, 48),
    rotation: int = 0,
    gop: int | None = None,
    seekable: bool = True,
) -> bytes:
    """A clip whose frame i is grey level i * SHADE_STEP (so samples can be told apart), encoded with PyAV."""
    sink: Any = io.BytesIO() if seekable else Unseekable()
    width, height = size
    with av.open(sink, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        for index in range(max(1, round(seconds * fps))):
            pixels = np.zeros((height, width, 3), np.uint8)
            pixels[:] = (index * SHADE_STEP) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return sink.getvalue() if seekable else bytes(sink.buffer)


def shade(frame: video.VideoFrame) -> float:
    return float(np.asarray(Image.open(io.BytesIO(frame.image.data)))[:, :, 0].mean())


def times(decoded: DecodedVideo) -> list[int]:
    return [frame.ts_ms for frame in decoded.frames]


def refusal(data: bytes, limits: VideoLimits = LIMITS) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        decode_video(data, limits)
    return info.value


# ---- containers and codecs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "codec"), [("mp4", "libx264"), ("mp4", "mpeg4"), ("webm", "libvpx"), ("webm", "libvpx-vp9"), ("gif", "gif")]
)
def test_each_container_and_codec_decodes_to_frames_at_the_rate(fmt: str, codec: str) -> None:
    """MP4 (H.264, MPEG-4), WebM (VP8, VP9) and GIF clips of 3 s give one JPEG frame every half second."""
    decoded = decode_video(clip(fmt, codec), LIMITS)
    assert times(decoded) == [0, 500, 1000, 1500, 2000, 2500]
    assert {(frame.image.mime, frame.image.width, frame.image.height) for frame in decoded.frames} == {("image/jpeg", 64, 48)}


def test_samples_are_the_frames_due_at_their_times() -> None:
    """The frame sampled at t is the one the video shows at t (frame 5 at 0.5 s in a 10 fps clip)."""
    decoded = decode_video(clip(), LIMITS)
    assert [round(shade(frame) / SHADE_STEP) for frame in decoded.frames] == [0, 5, 10, 15, 20, 25]


def test_frames_carry_their_hash_and_the_video_its_own() -> None:
    """Each frame's sha256 is that of its JPEG bytes, and the video's that of the client's bytes."""
    data = clip()
    decoded = decode_video(data, LIMITS)
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()
    assert all(frame.image.sha256 == hashlib.sha256(frame.image.data).hexdigest() for frame in decoded.frames)


def test_a_rotated_phone_video_comes_out_upright() -> None:
    """A stream whose display matrix turns it 90° gives frames turned as it is shown (48x64, not 64x48)."""
    decoded = decode_video(clip(rotation=90), LIMITS)
    assert {(frame.image.width, frame.image.height) for frame in decoded.frames} == {(48, 64)}


# ---- sampling bounds ---------------------------------------------------------------------------


def test_a_long_video_spreads_max_frames_over_all_of_it() -> None:
    """A 20 s clip at 2 samples/s would give 40 frames: it gives max_frames (8), one every 2.5 s."""
    decoded = decode_video(clip(seconds=20.0, fps=4), LIMITS)
    assert times(decoded) == [0, 2500, 5000, 7500, 10000, 12500, 15000, 17500]


def test_a_video_of_undeclared_length_still_keeps_at_most_max_frames_spread_over_it() -> None:
    """A WebM written without its length (as MediaRecorder writes) keeps at most max_frames, evenly spaced,
    the last in the clip's final quarter."""
    data = clip("webm", "libvpx", seconds=20.0, fps=5, seekable=False)
    decoded = decode_video(data, LIMITS)
    gaps = {later - earlier for earlier, later in zip(times(decoded), times(decoded)[1:])}
    assert len(decoded.frames) <= LIMITS.max_frames and len(gaps) == 1
    assert times(decoded)[-1] >= 15_000


def test_sparse_frames_of_undeclared_length_still_keep_at_most_max_frames() -> None:
    """Two frames a second apart, sampled every half second, with room for one: the first alone is kept
    (the step doubles as often as it must)."""
    data = clip("webm", "libvpx", seconds=2.0, fps=1, seekable=False)
    assert times(decode_video(data, VideoLimits(5_000_000, 1_000_000, 30.0, 1, 2.0))) == [0]


def test_a_short_clip_of_slow_frames_repeats_no_frame() -> None:
    """A 2 fps GIF sampled at 4 fps gives each of its frames once, not twice."""
    limits = VideoLimits(max_bytes=5_000_000, max_pixels=1_000_000, max_duration_s=30.0, max_frames=32, fps=4.0)
    decoded = decode_video(clip("gif", "gif", seconds=3.0, fps=2), limits)
    assert times(decoded) == [0, 500, 1000, 1500, 2000, 2500]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seconds=st.floats(0.3, 12.0),
    source_fps=st.sampled_from([1, 3, 10, 24]),
    sample_fps=st.sampled_from([0.5, 1.0, 2.0, 5.0]),
    max_frames=st.integers(1, 12),
    declared=st.booleans(),
)
def test_any_clip_gives_at_most_max_frames_in_time_order(
    seconds: float, source_fps: int, sample_fps: float, max_frames: int, declared: bool
) -> None:
    """Whatever the clip's length and rates, and whether it declares its length: at least one and at most
    max_frames frames, the first at 0, their times strictly rising (no frame twice), none past the clip's end."""
    frames = max(1, round(seconds * source_fps))
    data = clip("webm", "libvpx", seconds=seconds, fps=source_fps, size=(16, 16), seekable=declared)
    decoded = decode_video(data, VideoLimits(5_000_000, 1_000_000, 30.0, max_frames, sample_fps))
    stamps = times(decoded)
    assert 1 <= len(stamps) <= max_frames and stamps[0] == 0
    assert all(earlier < later for earlier, later in pairwise(stamps))
    assert stamps[-1] < frames * 1000 / source_fps


def decoded_frames(monkeypatch: pytest.MonkeyPatch, data: bytes) -> tuple[DecodedVideo, int]:
    """The video decoded, and how many frames the decoder produced on the way."""
    count = 0
    timestamp = video._FrameSampler._timestamp

    def counted(sampler: Any, frame: Any) -> float:
        nonlocal count
        count += 1
        return timestamp(sampler, frame)

    monkeypatch.setattr(video._FrameSampler, "_timestamp", counted)
    return decode_video(data, LIMITS), count


def test_samples_past_a_keyframe_are_reached_by_seeking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Samples far apart are reached by seeking, and decoding stops at the last: one frame every 2.5 s of a
    20 s clip with a keyframe every second decodes under half of its 80 frames."""
    decoded, count = decoded_frames(monkeypatch, clip(seconds=20.0, fps=4, gop=4))
    assert times(decoded) == [0, 2500, 5000, 7500, 10000, 12500, 15000, 17500]
    assert count < 40


def test_a_clip_with_one_keyframe_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no keyframe lies between samples, seeking would only go back: each frame is decoded at most once."""
    decoded, count = decoded_frames(monkeypatch, clip(seconds=20.0, fps=4))
    assert len(decoded.frames) == LIMITS.max_frames and count <= 80


# ---- limits ------------------------------------------------------------------------------------


def test_too_many_bytes_is_too_large() -> None:
    """A video over the byte limit is refused before it is read."""
    limits = VideoLimits(max_bytes=100, max_pixels=1_000_000, max_duration_s=30.0, max_frames=8, fps=2.0)
    assert refusal(clip(), limits).code == ErrorCode.TOO_LARGE


def test_too_many_pixels_per_frame_is_too_large() -> None:
    """Frames over the pixel limit (read from the stream's header) are refused."""
    error = refusal(clip(size=(160, 120)), VideoLimits(5_000_000, 10_000, 30.0, 8, 2.0))
    assert error.code == ErrorCode.TOO_LARGE and "160x120" in error.message


def test_a_declared_length_over_the_limit_is_too_large() -> None:
    """A video whose container says it lasts longer than the limit is refused."""
    error = refusal(clip(seconds=6.0), VideoLimits(5_000_000, 1_000_000, 5.0, 8, 2.0))
    assert error.code == ErrorCode.TOO_LARGE and "6.0 s" in error.message


def test_an_undeclared_length_over_the_limit_is_too_large() -> None:
    """A video that does not say how long it is is refused once its frames pass the limit."""
    data = clip("webm", "libvpx", seconds=6.0, seekable=False)
    assert refusal(data, VideoLimits(5_000_000, 1_000_000, 5.0, 8, 2.0)).code == ErrorCode.TOO_LARGE


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is plainly not a video",
        b"#EXTM3U\n#EXT-X-TARGETDURATION:1\nfile:///etc/passwd\n",
        b"RIFF\x00\x00\x00\x00AVI LIST",
        b"\x00\x00\x00\x18ftypisom" + bytes(200),
        b"\x1a\x45\xdf\xa3" + bytes(200),
        b"GIF89a" + bytes(50),
    ],
    ids=["empty", "text", "playlist", "avi", "mp4-garbage", "webm-garbage", "gif-garbage"],
)
def test_bytes_that_are_no_video_are_bad_video(data: bytes) -> None:
    """Anything not a decodable MP4, WebM or GIF, playlists and other containers included, is bad_video."""
    assert refusal(data).code == ErrorCode.BAD_VIDEO


def test_a_truncated_video_is_bad_video_or_its_first_frames() -> None:
    """A clip cut in half never raises anything but bad_video; the frames it gives are the clip's."""
    data = clip("webm", "libvpx")
    try:
        decoded = decode_video(data[: len(data) // 2], LIMITS)
    except GatewayError as error:
        assert error.code == ErrorCode.BAD_VIDEO
    else:
        assert times(decoded) == times(decode_video(data, LIMITS))[: len(decoded.frames)]


def test_a_codec_off_the_allow_list_is_bad_video() -> None:
    """An FFV1 stream in a Matroska file is refused by name, not handed to its decoder."""
    error = refusal(clip("matroska", "ffv1"))
    assert error.code == ErrorCode.BAD_VIDEO and "ffv1" in error.message


def test_a_file_with_no_video_stream_is_bad_video() -> None:
    """An MP4 holding only audio is bad_video."""
    sink = io.BytesIO()
    with av.open(sink, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    error = refusal(sink.getvalue())
    assert error.code == ErrorCode.BAD_VIDEO and "no video stream" in error.message
