"""Videos as every family reads them: each sampled frame an image, its video and time named in the text."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.engine.contract import ChatImage
from gateway.media.video import DecodedVideo


def frames_as_images(videos: Sequence[DecodedVideo]) -> tuple[ChatImage, ...]:
    """The videos' frames in order, video after video: they follow the turn's photos in its message."""
    return tuple(frame.image for video in videos for frame in video.frames)


def frame_markers(videos: Sequence[DecodedVideo]) -> str:
    """One marker per frame, in the frames' order ("[video 1, 0.0 s] [video 1, 0.5 s] ..."): a message's
    images precede its text in every family's template, so the markers name them in the order they came."""
    return " ".join(
        f"[video {number}, {frame.ts_ms / 1000:.1f} s]" for number, video in enumerate(videos, 1) for frame in video.frames
    )


def with_markers(text: str, videos: Sequence[DecodedVideo]) -> str:
    """The turn's text as the model reads it: the frames' markers on a line of their own, then the text."""
    markers = frame_markers(videos)
    return f"{markers}\n{text}" if markers else text
