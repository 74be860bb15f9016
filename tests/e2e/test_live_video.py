"""End to end: video attachments on a WebSocket turn reach the demo engine as timestamped frames, within the limits."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from gateway.client import GatewayClient, frames_from
from gateway.core import attachments
from gateway.media.video import DecodedVideo, VideoLimits, decode_video
from tests.conftest import RunningServer, image_bytes

GREEDY = {"temperature": 0, "max_tokens": 4}


def mp4(seconds: float = 2.0, fps: int = 10, size: tuple[int, int] = (64, 48)) -> bytes:
    """An H.264 clip whose frames darken to lighten, made on the spot with PyAV."""
    out = io.BytesIO()
    width, height = size
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(round(seconds * fps)):
            pixels = np.full((height, width, 3), index * 8 % 256, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return out.getvalue()


async def test_ready_announces_the_video_limits(server: RunningServer) -> None:
    """`ready.limits` carries the video and live window bounds a client must respect."""
    async with GatewayClient(server.ws_url) as client:
        limits = client.ready["limits"]
    s = server.settings
    assert limits["max_videos_per_turn"] == s.max_videos_per_turn and limits["max_video_frames"] == s.max_video_frames
    assert limits["video_fps"] == s.video_fps and limits["max_video_duration_s"] == s.max_video_duration_s
    assert limits["live_window_frames"] == s.live_window_frames and limits["max_frames_per_second"] == s.max_frames_per_second


async def test_a_video_reaches_the_prompt_as_frames_named_with_their_times(server: RunningServer) -> None:
    """A 2 s clip sampled at video_fps (2) is four frames after the turn's photo, each named in the text."""
    photo = image_bytes()
    async with GatewayClient(server.ws_url) as client:
        plain = await client.turn("t0", "what happens?", [photo], **GREEDY)
        await client.request({"type": "reset"})
        result = await client.turn("t1", "what happens?", [photo], videos=[mp4()], **GREEDY)
        history = await client.request({"type": "history"})
        live = server.app.state.ws.hub.live[client.ready["session"]]
    assert result.done and result.done["finish_reason"] in ("length", "stop") and not result.errors
    turn = live.session.exchanges[0].turn
    assert turn.text == "[video 1, 0.0 s] [video 1, 0.5 s] [video 1, 1.0 s] [video 1, 1.5 s]\nwhat happens?"
    assert len(turn.images) == 5 and [i.format for i in turn.images] == ["png", *["jpeg"] * 4]
    assert result.accepted and plain.accepted
    assert result.accepted["prompt_tokens"] > plain.accepted["prompt_tokens"] + 4 * server.engine.loaded.prompt.image_tokens(
        48, 64
    )
    assert len(history["turns"][0]["images"]) == 5  # the frames are the turn's images in the history
    assert server.app.state.runtime.turns.images._held[live.id] == turn.image_bytes  # and count against its bounds


async def test_videos_are_decoded_on_the_decode_pool(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding runs on the turn service's decode workers, never on the event loop's thread."""
    threads: list[str] = []

    def recording(data: bytes, limits: VideoLimits, index: int = 0) -> DecodedVideo:
        threads.append(threading.current_thread().name)
        return decode_video(data, limits, index)

    monkeypatch.setattr(attachments, "decode_video", recording)
    async with GatewayClient(server.ws_url) as client:
        result = await client.turn("t1", "look", videos=[mp4(1.0)], **GREEDY)
    assert result.done and threads and all(name.startswith("gateway-decode") for name in threads)


async def test_a_corrupt_video_is_bad_video_and_the_connection_goes_on(server: RunningServer) -> None:
    """Bytes that are no video, or a clip cut short, get `bad_video` naming the turn; the next turn runs."""
    clip = mp4()
    async with GatewayClient(server.ws_url) as client:
        junk = await client.turn("t1", "look", videos=[b"not a video at all"], **GREEDY)
        cut = await client.turn("t2", "look", videos=[clip[: len(clip) // 3]], **GREEDY)
        after = await client.turn("t3", "and now?", **GREEDY)
    assert [e["code"] for e in junk.errors] == ["bad_video"] and junk.errors[0]["id"] == "t1"
    assert [e["code"] for e in cut.errors] == ["bad_video"] and cut.done is None
    assert after.done and not after.errors


async def test_videos_over_the_limits_are_too_large(server: RunningServer) -> None:
    """More videos than max_videos_per_turn, or one over max_image_bytes, get `too_large`; nothing joins the history."""
    clip = mp4(0.5)
    most = server.settings.max_videos_per_turn
    async with GatewayClient(server.ws_url) as client:
        many = await client.turn("t1", "look", videos=[clip] * (most + 1), **GREEDY)
        huge = await client.turn("t2", "look", videos=[clip + bytes(server.settings.max_image_bytes)], **GREEDY)
        history = await client.request({"type": "history"})
    assert [e["code"] for e in many.errors] == ["too_large"] and [e["code"] for e in huge.errors] == ["too_large"]
    assert history["turns"] == []


def test_frames_from_reads_a_video_file_as_a_camera_would_send_it(tmp_path: Path) -> None:
    """The client's `frames_from` takes a 2 s clip's frames at 2 per second of video, each a JPEG."""
    path = tmp_path / "clip.mp4"
    path.write_bytes(mp4())
    frames = list(frames_from(path, fps=2.0))
    assert len(frames) == 4 and all(frame[:3] == b"\xff\xd8\xff" for frame in frames)
