"""Videos as the model reads them: frames as images named in the text, or clips where the engine reads video."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from gateway.core.live_window import LiveFrame
from gateway.engine.contract import ChatImage, ChatVideo
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


def as_clips(videos: Sequence[DecodedVideo]) -> tuple[ChatVideo, ...]:
    """The videos as clips, for an engine that reads video natively: their frames with their times."""
    return tuple(
        ChatVideo(tuple(f.image for f in video.frames), tuple(f.ts_ms for f in video.frames), video.sha256) for video in videos
    )


def read_videos(
    text: str, images: tuple[ChatImage, ...], videos: Sequence[DecodedVideo], as_clip: bool
) -> tuple[str, tuple[ChatImage, ...], tuple[ChatVideo, ...]]:
    """A message's text, images and clips with its videos in them, as the model reads them: clips where the engine
    reads video natively (`as_clip`), else their frames after the message's images, named in its text."""
    if as_clip:
        return text, images, as_clips(videos)
    return with_markers(text, videos), images + frames_as_images(videos), ()


def window_clip(frames: Sequence[LiveFrame]) -> ChatVideo:
    """A live window as one clip: each distinct frame at the client time it was first seen (a still scene's
    frame stays one frame), named by its frames' hashes."""
    return clip_of([frame.image for frame in frames], [frame.first_ts_ms for frame in frames])


def clip_of(images: Sequence[ChatImage], ts_ms: Sequence[int]) -> ChatVideo:
    """Frames as one clip, timed from its first frame, named by the frames' hashes."""
    digest = hashlib.sha256("".join(image.sha256 for image in images).encode()).hexdigest()
    return ChatVideo(tuple(images), tuple(ts - ts_ms[0] for ts in ts_ms), digest)


def only_frames(clip: ChatVideo, frames: Sequence[ChatImage]) -> ChatVideo:
    """The clip's frames that are among `frames` (by hash), at their times, as a clip of their own."""
    keep = {frame.sha256 for frame in frames}
    kept = [(frame, ts) for frame, ts in zip(clip.frames, clip.ts_ms) if frame.sha256 in keep]
    return clip_of([frame for frame, _ in kept], [ts for _, ts in kept]) if kept else ChatVideo((), (), clip.sha256)
