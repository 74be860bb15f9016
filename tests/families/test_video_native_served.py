"""End to end on a served Qwen2-VL, GLM-4.1V, GLM-4.5V (glm4v_moe) and LLaVA-OneVision: a live turn reads the window
as one clip, and a `video_url` part and a turn's `videos` read as clips, each reply the model's own greedy `generate`
over the native layout."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator

import pytest
import requests
import torch

from gateway.client import GatewayClient, TurnResult
from gateway.config import Settings
from gateway.engine.contract import ChatMessage, ChatVideo
from gateway.media.images import ImageLimits, check_image
from tests.conftest import RunningServer, start_server
from tests.families.builders import cached_family
from tests.families.video import chat_video, clip, scene, video_template

MAX_TOKENS = 8
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", params=("qwen2_vl", "glm4v", "glm4v_moe", "llava_onevision"))
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    template = tmp_path_factory.mktemp("template") / "video.jinja"
    template.write_text(video_template(request.param))
    running = start_server(cached_family(request.param), Settings(chat_template=str(template)))
    try:
        yield running
    finally:
        running.stop()


def greedy(server: RunningServer, messages: list[ChatMessage]) -> tuple[int, str]:
    """The prompt's length and the model's own greedy reply over the native layout of `messages`."""
    loaded = server.engine.loaded
    inputs = loaded.prompt.for_another_thread().build(messages)
    mask = torch.ones_like(inputs.input_ids)
    with torch.inference_mode():
        out = loaded.model.generate(
            input_ids=inputs.input_ids, attention_mask=mask, **inputs.extras, max_new_tokens=MAX_TOKENS, do_sample=False
        )
    tokens = out[0, inputs.prompt_tokens :].tolist()
    return inputs.prompt_tokens, str(loaded.tokenizer.decode(tokens, skip_special_tokens=True))


def prompt_ids(server: RunningServer, messages: list[ChatMessage]) -> list[int]:
    """The prompt's token ids over the native layout of `messages`."""
    ids: list[int] = server.engine.loaded.prompt.for_another_thread().build(messages).input_ids[0].tolist()
    return ids


def held_prefix(server: RunningServer, earlier: list[ChatMessage], later: list[ChatMessage]) -> tuple[int, int]:
    """How many prompt tokens two prompts share from their start, and the earlier prompt's length."""
    first_ids, later_ids = prompt_ids(server, earlier), prompt_ids(server, later)
    shared = next((n for n, (a, b) in enumerate(zip(first_ids, later_ids, strict=False)) if a != b), len(first_ids))
    return shared, len(first_ids)


def window_message(result: TurnResult, frames: list[bytes], text: str) -> ChatMessage:
    """A live turn's message as the model reads it: the window's summary before the text, its frames one clip
    (streamed at the server's two frames a second)."""
    assert result.accepted is not None
    live = result.accepted["live_frames"]
    summary = f"[live camera: {live['count']} frames, {live['first_ts'] / 1000:.3f} s to {live['last_ts'] / 1000:.3f} s]"
    images = tuple(check_image(data, ImageLimits(max_bytes=1 << 24, max_pixels=1 << 22)) for data in frames)
    # Named by its frames: the prompt builder holds laid-out clips by name, so two windows must not share one.
    video = ChatVideo(images, tuple(range(0, 500 * len(frames), 500)), hashlib.sha256(b"".join(frames)).hexdigest())
    return ChatMessage("user", f"{summary}\n{text}", videos=(video,))


def jpeg(index: int) -> bytes:
    out = io.BytesIO()
    scene(index * 4, (150, 100)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_the_engine_reads_video(server: RunningServer) -> None:
    """A family with a native video layout makes the engine read clips (front ends then send them as clips)."""
    assert server.engine.reads_video


async def test_a_live_turn_reads_the_window_as_one_clip(server: RunningServer) -> None:
    """The window's frames reach the model as one clip after the window's summary, after a warm history: the
    reply and prompt length are `generate`'s over that layout."""
    frames = [jpeg(i) for i in range(4)]
    async with GatewayClient(server.ws_url) as client:
        hello = await client.turn("t0", "Hello there.", temperature=0, max_tokens=MAX_TOKENS)
        assert await client.stream_frames("camera", frames) == 4
        result = await client.turn("t1", "What happens?", live=True, temperature=0, max_tokens=MAX_TOKENS)
    assert result.accepted is not None and result.done is not None
    assert result.accepted["live_frames"]["count"] == 4
    history = [ChatMessage("user", "Hello there."), ChatMessage("assistant", hello.text)]
    prompt, reply = greedy(server, [*history, window_message(result, frames, "What happens?")])
    assert result.accepted["prompt_tokens"] == prompt and result.text == reply
    # The history's KV stays warm: only the window's clip and the new text are prefilled (LLaVA-OneVision's template
    # writes the generation prompt's last token otherwise once a reply follows it, so that one token too).
    rewritten = 1 if server.engine.loaded.prompt.family.video == "llava_onevision" else 0
    assert hello.done is not None
    assert result.done["usage"]["cached_tokens"] >= hello.done["usage"]["prompt_tokens"] - rewritten


def test_a_video_url_reads_as_a_clip(server: RunningServer) -> None:
    """A `video_url` part on /v1/chat/completions reaches the model as a clip, not as frames with markers."""
    data = clip()
    url = "data:video/mp4;base64," + base64.b64encode(data).decode()
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What happens?"}]
    messages = [{"role": "user", "content": content}]
    body = {"model": "gateway-demo", "messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS}
    response = requests.post(f"{server.http_url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    answer = response.json()
    prompt, reply = greedy(server, [ChatMessage("user", "What happens?", videos=(chat_video(data),))])
    assert answer["usage"]["prompt_tokens"] == prompt
    assert answer["choices"][0]["message"]["content"] == reply


async def test_a_turns_videos_read_as_clips(server: RunningServer) -> None:
    """A WebSocket turn's `videos` reach the model as clips, as `video_url` parts do: the reply and prompt length are
    `generate`'s over the clip. A later turn reads that message as the same clip, so its prompt opens with the
    earlier prompt, held: `cached_tokens` covers all the two share (the whole earlier prompt, less a last token
    that a template writes otherwise before a reply, as LLaVA-OneVision's does)."""
    data = clip()
    async with GatewayClient(server.ws_url) as client:
        result = await client.turn("t0", "What happens?", videos=[data], temperature=0, max_tokens=MAX_TOKENS)
        later = await client.turn("t1", "And then?", temperature=0, max_tokens=MAX_TOKENS)
    assert result.accepted is not None and result.done is not None
    shown = ChatMessage("user", "What happens?", videos=(chat_video(data),))
    prompt, reply = greedy(server, [shown])
    assert result.done["usage"]["prompt_tokens"] == prompt and result.text == reply
    prompt, reply = greedy(server, [shown, ChatMessage("assistant", result.text), ChatMessage("user", "And then?")])
    assert later.done is not None and later.done["usage"]["prompt_tokens"] == prompt and later.text == reply
    shared, first = held_prefix(server, [shown], [shown, ChatMessage("assistant", result.text), ChatMessage("user", "And then?")])
    assert shared >= first - 1 and later.done["usage"]["cached_tokens"] >= shared


async def test_the_turn_after_a_live_turn_reads_its_window_as_the_same_clip(server: RunningServer) -> None:
    """The history keeps a live exchange as its summary, but while the session is in memory the next prompt shows
    the clip the live turn read where it stands: the reply and prompt length are `generate`'s over that layout, and
    `cached_tokens` covers all the two prompts share (the live turn's whole prompt, less a last token that a
    template writes otherwise before a reply), so the window's KV is reused, not prefilled again."""
    frames = [jpeg(i) for i in range(2, 6)]  # four distinct scenes (later ones merge: the ball has stopped)
    async with GatewayClient(server.ws_url) as client:
        assert await client.stream_frames("camera", frames) == 4
        result = await client.turn("t0", "What happens?", live=True, temperature=0, max_tokens=MAX_TOKENS)
        later = await client.turn("t1", "And then?", temperature=0, max_tokens=MAX_TOKENS)
    shown = window_message(result, frames, "What happens?")
    messages = [shown, ChatMessage("assistant", result.text), ChatMessage("user", "And then?")]
    prompt, reply = greedy(server, messages)
    assert later.done is not None and later.done["usage"]["prompt_tokens"] == prompt and later.text == reply
    shared, first = held_prefix(server, [shown], messages)
    assert shared >= first - 1 and later.done["usage"]["cached_tokens"] >= shared


async def test_a_second_live_turn_reads_only_the_frames_no_earlier_clip_showed(server: RunningServer) -> None:
    """The next live turn's clip holds only the window's frames the earlier live turn's clip did not show, after that
    exchange shown as it was read: its reply and prompt length are `generate`'s over that layout, and
    `cached_tokens` covers the earlier live turn's prompt, so its frames are not prefilled again."""
    first_frames, new_frames = [jpeg(i) for i in (2, 3)], [jpeg(i) for i in (4, 5)]
    async with GatewayClient(server.ws_url) as client:
        assert await client.stream_frames("camera", first_frames) == 2
        first = await client.turn("t0", "What happens?", live=True, temperature=0, max_tokens=MAX_TOKENS)
        assert await client.stream_frames("camera", new_frames) == 2
        second = await client.turn("t1", "And now?", live=True, temperature=0, max_tokens=MAX_TOKENS)
    assert second.accepted is not None and second.accepted["live_frames"]["count"] == 4
    shown = [window_message(first, first_frames, "What happens?"), ChatMessage("assistant", first.text)]
    messages = [*shown, window_message(second, new_frames, "And now?")]
    prompt, reply = greedy(server, messages)
    assert second.done is not None and second.done["usage"]["prompt_tokens"] == prompt and second.text == reply
    shared, earlier = held_prefix(server, shown[:1], messages)
    assert shared >= earlier - 1 and second.done["usage"]["cached_tokens"] >= shared
