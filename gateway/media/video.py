"""Video attachments: MP4, WebM and GIF bytes decoded with PyAV into frames sampled at a rate, under the
image limits plus a duration and a frame cap; a pure function for the decode pool, never the event loop."""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

import av
import av.container
import av.video.frame
import av.video.stream
from PIL import Image

from gateway.engine.contract import ChatImage
from gateway.errors import ErrorCode, GatewayError

# Codecs a client's video may use: what browsers, phones and cameras record. FFmpeg decodes hundreds more,
# each a parser of hostile bytes we would expose for no user.
ALLOWED_CODECS = frozenset({"h264", "hevc", "mpeg4", "vp8", "vp9", "av1", "gif", "mjpeg"})
# A frame rate beyond any camera's: a file holding more frames than this per allowed second is crafted to
# make us decode, and is refused before its frames are.
MAX_SOURCE_FPS = 240
# Sampled frames are kept as JPEG (like the images clients send): near-lossless at 95, a fifth of PNG's
# bytes and several times faster to write, so a clip's frames cost what its photos would.
FRAME_JPEG_QUALITY = 95
# A keyframe at least this far ahead and before the next sample is reached by seeking, not by decoding
# every frame on the way; nearer, decoding on costs about what a seek's demuxer and decoder restart does.
SEEK_GAP_S = 1.0
_EPSILON_S = 1e-6  # timestamps are rationals read as floats: a frame at 0.1 s fills the 0.1 s sample


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int  # the client's bytes, as for an image
    max_pixels: int  # per frame, as for an image
    max_duration_s: float
    max_frames: int  # sampled frames kept; a longer video's samples spread over all of it
    fps: float  # samples per second of video, while max_frames allows


@dataclass(frozen=True, slots=True)  # one per sampled frame
class VideoFrame:
    """One sampled frame: its pixels as a JPEG image, upright, and its time from the video's first frame."""

    image: ChatImage
    ts_ms: int


@dataclass(frozen=True)
class DecodedVideo:
    frames: tuple[VideoFrame, ...]
    sha256: str  # of the client's bytes


def decode_video(data: bytes, limits: VideoLimits, index: int = 0) -> DecodedVideo:
    """Frames of an MP4, WebM or GIF video sampled at `limits.fps` (spread evenly over the whole video when
    more than `limits.max_frames` would be), or raise `bad_video` / `too_large`. Sizes and the declared
    length are checked before any frame is decoded, and decoding stops once the last sample is taken."""
    label = f"video {index}"
    if len(data) > limits.max_bytes:
        raise GatewayError(ErrorCode.TOO_LARGE, f"{label} is {len(data)} bytes; the limit is {limits.max_bytes}")
    container_format = _container_format(data, label)
    try:
        with av.open(io.BytesIO(data), mode="r", format=container_format) as container:
            frames = _FrameSampler(container, limits, label).run()
    except GatewayError:
        raise
    except Exception:  # FFmpeg's errors (InvalidDataError, EOF, ...) and PyAV's on damaged files: all mean corrupt
        raise GatewayError(ErrorCode.BAD_VIDEO, f"{label} is truncated or corrupt") from None
    if not frames:
        raise GatewayError(ErrorCode.BAD_VIDEO, f"{label} has no frames")
    return DecodedVideo(frames=tuple(frames), sha256=hashlib.sha256(data).hexdigest())


def _container_format(data: bytes, label: str) -> str:
    """The demuxer, chosen by magic bytes and never probed: FFmpeg's probing also opens formats (HLS and
    concat playlists) that make it read other files and URLs."""
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska and WebM
        return "matroska"
    if data[4:8] == b"ftyp":  # ISO base media: MP4, MOV, 3GP
        return "mp4"
    raise GatewayError(ErrorCode.BAD_VIDEO, f"{label} is not an MP4, WebM or GIF video")


class _FrameSampler:
    """One pass over a video's frames, keeping those due at multiples of a step. When a video's length is
    not declared (WebM from a browser's MediaRecorder) or lies, passing `max_frames` drops every other kept
    frame and doubles the step, so any length ends with at most `max_frames` spread over all of it."""

    def __init__(self, container: av.container.InputContainer, limits: VideoLimits, label: str) -> None:
        self._container = container
        self._limits = limits
        self._label = label
        self._stream = self._video_stream()
        declared = self._declared_duration_s()
        self._known_end_s = declared
        self._step_s = max(1 / limits.fps, (declared or 0) / limits.max_frames)
        self._stride = 1  # samples are due at ticks that are multiples of the stride, a tick being one step
        self._next_tick = 0
        self._kept: list[tuple[int, VideoFrame]] = []
        self._decoded = 0
        self._decode_budget = math.ceil(limits.max_duration_s * MAX_SOURCE_FPS) + 1
        self._start_s: float | None = None
        self._last_s = 0.0
        self._may_seek = True
        self._sought_tick = -1  # the sample the last seek went for: never sought twice
        self._last_key_s: float | None = None
        self._key_gap_s: float | None = None  # the widest gap between keyframes seen; seeks assume none wider

    def run(self) -> list[VideoFrame]:
        while self._pass():  # each pass decodes on from the start or from a seek
            pass
        return [frame for _, frame in self._kept]

    def _pass(self) -> bool:
        """Decode on until the video ends (False) or a seek moved ahead (True)."""
        for frame in self._container.decode(self._stream):
            at_s = self._timestamp(frame)
            if frame.key_frame:
                self._note_keyframe(at_s)
            if at_s >= self._due_s() - _EPSILON_S:
                self._keep(frame, at_s)
            if self._known_end_s is not None and self._due_s() >= self._known_end_s - _EPSILON_S:
                return False  # every sample is taken: the rest is never decoded
            if self._worth_seeking(at_s):
                return self._seek()
        return False

    def _note_keyframe(self, at_s: float) -> None:
        if self._last_key_s is not None and at_s > self._last_key_s:
            self._key_gap_s = max(self._key_gap_s or 0.0, at_s - self._last_key_s)
        self._last_key_s = at_s

    def _worth_seeking(self, at_s: float) -> bool:
        """Whether a keyframe at least SEEK_GAP_S ahead surely comes before the next sample, so a seek skips
        frames no sample needs. Until two keyframes were seen their spacing is unknown: decode on."""
        if not self._may_seek or self._next_tick == self._sought_tick:
            return False
        if self._last_key_s is None or self._key_gap_s is None:
            return False
        next_key_s = self._last_key_s + self._key_gap_s
        return next_key_s <= self._due_s() + _EPSILON_S and next_key_s - at_s >= SEEK_GAP_S

    def _video_stream(self) -> av.video.stream.VideoStream:
        if not self._container.streams.video:
            raise GatewayError(ErrorCode.BAD_VIDEO, f"{self._label} has no video stream")
        stream = self._container.streams.video[0]
        codec = stream.codec_context.name
        if codec not in ALLOWED_CODECS:
            allowed = ", ".join(sorted(ALLOWED_CODECS))
            raise GatewayError(ErrorCode.BAD_VIDEO, f"{self._label}: codec {codec} is not one of {allowed}")
        self._check_pixels(stream.codec_context.width, stream.codec_context.height)  # from the header
        # The decoder itself refuses a larger frame later in the stream, before allocating it.
        stream.codec_context.options = {"max_pixels": str(self._limits.max_pixels)}
        # One decoding thread: the decode pool's workers are the CPU this work may take.
        stream.thread_type = "SLICE"
        stream.codec_context.thread_count = 1
        return stream

    def _declared_duration_s(self) -> float | None:
        """The container's declared length, refused at once when over the limit; None when not declared."""
        if self._container.duration is None:
            return None
        declared = self._container.duration / av.time_base
        if declared > self._limits.max_duration_s:
            raise GatewayError(
                ErrorCode.TOO_LARGE,
                f"{self._label} lasts {declared:.1f} s; the limit is {self._limits.max_duration_s:g} s",
            )
        return declared

    def _timestamp(self, frame: av.video.frame.VideoFrame) -> float:
        """Seconds from the first frame, after the frame passed every bound."""
        self._decoded += 1
        if self._decoded > self._decode_budget:
            raise GatewayError(ErrorCode.TOO_LARGE, f"{self._label} holds more than {self._decode_budget} frames")
        self._check_pixels(frame.width, frame.height)  # a stream may change size after its header
        if frame.time is None:  # no timestamp: one frame period after the last
            at_s = self._last_s + 1 / float(self._stream.average_rate or MAX_SOURCE_FPS)
        else:
            self._start_s = frame.time if self._start_s is None else self._start_s
            at_s = frame.time - self._start_s
        if at_s > self._limits.max_duration_s:
            raise GatewayError(ErrorCode.TOO_LARGE, f"{self._label} lasts over {self._limits.max_duration_s:g} s")
        if self._decoded > 1 and at_s <= self._last_s:
            self._may_seek = False  # a seek went back: keyframes are too far apart for seeking to pay
        self._last_s = at_s
        return at_s

    def _check_pixels(self, width: int, height: int) -> None:
        if width * height > self._limits.max_pixels:
            raise GatewayError(
                ErrorCode.TOO_LARGE,
                f"{self._label} is {width}x{height} pixels; the limit is {self._limits.max_pixels} pixels",
            )

    def _due_s(self) -> float:
        return self._next_tick * self._step_s

    def _keep(self, frame: av.video.frame.VideoFrame, at_s: float) -> None:
        span = self._stride * self._step_s
        tick = max(self._next_tick, math.floor(at_s / span + _EPSILON_S) * self._stride)  # the latest sample it fills
        self._kept.append((tick, VideoFrame(image=_jpeg(frame), ts_ms=round(at_s * 1000))))
        self._next_tick = tick + self._stride
        while len(self._kept) > self._limits.max_frames:  # sparse ticks may need the stride doubled again
            self._stride *= 2
            self._kept = [(kept_tick, kept) for kept_tick, kept in self._kept if kept_tick % self._stride == 0]
            self._next_tick = math.ceil(self._next_tick / self._stride) * self._stride

    def _seek(self) -> bool:
        """Move to the keyframe at or before the next sample; where the container cannot seek, decode on."""
        self._sought_tick = self._next_tick
        self._last_key_s = None  # the keyframe it lands on is no measure of their spacing
        time_base = self._stream.time_base
        if not time_base:
            self._may_seek = False
            return True
        try:
            self._container.seek(int(((self._start_s or 0) + self._due_s()) / time_base), stream=self._stream)
        except av.FFmpegError:  # a container without an index
            self._may_seek = False
        return True


_UPRIGHT = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def _jpeg(frame: av.video.frame.VideoFrame) -> ChatImage:
    """The frame as upright RGB JPEG: a phone's rotation (the stream's display matrix) applied, as
    `gateway.media.images` applies EXIF orientation."""
    image = frame.to_image()  # type: ignore[no-untyped-call]
    turn = _UPRIGHT.get(round(frame.rotation) % 360)  # counter-clockwise degrees to display it upright
    if turn is not None:
        image = image.transpose(turn)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=FRAME_JPEG_QUALITY)
    data = out.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    return ChatImage(data=data, mime="image/jpeg", width=image.width, height=image.height, sha256=digest)
