"""Clips to an upstream as vLLM takes sampled frames: `video_url` parts of `video/jpeg` data URIs, and their rate."""

from __future__ import annotations

import base64

from gateway.engine.contract import ChatMessage, ChatVideo, SamplingParams
from gateway.engine.upstream import wire
from tests.conftest import chat_image

FRAMES = (chat_image((200, 0, 0), fmt="JPEG"), chat_image((0, 200, 0), fmt="JPEG"), chat_image((0, 0, 200), fmt="JPEG"))
CLIP = ChatVideo(FRAMES, (0, 250, 500), "clip")


def test_a_clip_is_one_data_uri_of_its_frames() -> None:
    """The frames' own bytes, base64 and comma-separated in order, under vLLM's `video/jpeg` type."""
    url = wire.video_part(CLIP)["video_url"]["url"]
    head, _, data = url.partition(",")
    assert head == "data:video/jpeg;base64"
    assert [base64.b64decode(part) for part in data.split(",")] == [frame.data for frame in FRAMES]


def test_a_message_holds_images_then_clips_then_text() -> None:
    """Parts in the order the local engine lays them out: images, clips, the text."""
    message = ChatMessage("user", "What happens?", images=(FRAMES[0],), videos=(CLIP,))
    parts = wire.message_body(message)["content"]
    assert [part["type"] for part in parts] == ["image_url", "video_url", "text"]


def test_the_request_carries_the_clips_rate() -> None:
    """vLLM's `media_io_kwargs` say the clip's frames per second (here 4); no clip, no such field."""
    with_clip = wire.chat_body("m", [ChatMessage("user", "x", videos=(CLIP,))], SamplingParams())
    assert with_clip["media_io_kwargs"] == {"video": {"fps": 4.0}}
    assert "media_io_kwargs" not in wire.chat_body("m", [ChatMessage("user", "x")], SamplingParams())
    assert wire.tokenize_body("m", [ChatMessage("user", "x", videos=(CLIP,))])["media_io_kwargs"]["video"]["fps"] == 4.0
