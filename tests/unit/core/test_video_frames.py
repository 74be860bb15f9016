"""A turn's or a request message's videos as the model reads them: clips where the engine reads video, else frames."""

from __future__ import annotations

from gateway.core.video_frames import read_videos
from gateway.media.video import DecodedVideo, VideoFrame
from tests.conftest import chat_image

PHOTO = chat_image((10, 10, 10))
VIDEO = DecodedVideo((VideoFrame(chat_image((1, 2, 3)), 0), VideoFrame(chat_image((4, 5, 6)), 500)), "abc")


def test_an_engine_that_reads_video_gets_each_video_as_one_clip() -> None:
    """The text and photos stay as sent; the video is one clip of its frames at their times."""
    text, images, clips = read_videos("What happens?", (PHOTO,), [VIDEO], as_clip=True)
    assert (text, images) == ("What happens?", (PHOTO,))
    assert len(clips) == 1 and clips[0].ts_ms == (0, 500) and clips[0].sha256 == "abc"
    assert clips[0].frames == tuple(frame.image for frame in VIDEO.frames)


def test_otherwise_frames_follow_the_photos_named_in_the_text() -> None:
    """Frames as images after the message's photos, a marker per frame before the text, and no clip."""
    text, images, clips = read_videos("What happens?", (PHOTO,), [VIDEO], as_clip=False)
    assert text == "[video 1, 0.0 s] [video 1, 0.5 s]\nWhat happens?"
    assert images == (PHOTO, *(frame.image for frame in VIDEO.frames)) and clips == ()
