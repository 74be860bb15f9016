"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL, GLM-4.1V, GLM-4.5V (glm4v_moe) and LLaVA-OneVision read a video as a clip: the local
engine lays it out natively (temporal patches, video placeholders, their grid and seconds; LLaVA-OneVision's resized
frames) and gives exactly the model's own greedy `generate` over it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gateway.engine.contract import ChatMessage, GenerationRequest, GenerationResult, SamplingParams
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from gateway.errors import GatewayError
from tests.conftest import chat_image
from tests.families.builders import cached_family
from tests.families.video import VIDEO_FAMILIES, chat_video, clip, video_checkpoint, video_template
from tests.unit.engine.test_engine import Collector

MAX_TOKENS = 8
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(params=VIDEO_FAMILIES, scope="module")
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    template = tmp_path_factory.mktemp("template") / "video.jinja"
    template.write_text(video_template(request.param))
    return video_checkpoint(request.param, tmp_path_factory.mktemp("checkpoint")), template


@pytest.fixture
async def engine(family: tuple[Path, Path]) -> AsyncIterator[LocalEngine]:
    running = LocalEngine(load_model(str(family[0]), device="cpu", chat_template=str(family[1])))
    running.start()
    yield running
    await asyncio.to_thread(running.stop)


def clip_messages() -> list[ChatMessage]:
    """An image, then a five-frame clip (an odd count: the last temporal patch repeats its frame)."""
    video = chat_video(clip(seconds=2.5))
    return [ChatMessage("user", "What happens?", images=(chat_image(size=(60, 40)),), videos=(video,))]


async def engine_reply(engine: LocalEngine, messages: list[ChatMessage]) -> GenerationResult:
    sink = Collector()
    engine.submit(GenerationRequest(messages, SamplingParams(temperature=0, max_tokens=MAX_TOKENS)), sink)
    return await asyncio.wait_for(sink.done, 120)


def generated(engine: LocalEngine, messages: list[ChatMessage]) -> tuple[int, ...]:
    """The model's own greedy `generate` over the prompt's native layout."""
    inputs = engine.loaded.prompt.for_another_thread().build(messages)
    mask = torch.ones_like(inputs.input_ids)
    with torch.inference_mode():
        out = engine.loaded.model.generate(
            input_ids=inputs.input_ids, attention_mask=mask, **inputs.extras, max_new_tokens=MAX_TOKENS, do_sample=False
        )
    return tuple(out[0, inputs.prompt_tokens :].tolist())


async def test_the_engine_replies_as_generate_does_over_the_clip(engine: LocalEngine) -> None:
    """Greedy tokens over an image and a clip equal the model's own `generate` on the same inputs."""
    messages = clip_messages()
    assert (await engine_reply(engine, messages)).token_ids == generated(engine, messages)


async def test_a_new_clip_after_held_history_prefills_only_what_is_new(engine: LocalEngine) -> None:
    """A later turn with a new clip of as many frames (a live window's next) reuses the held KV of the history, the
    first clip included, prefilling from after it; its reply is still `generate`'s over the whole prompt."""
    first = clip_messages()
    reply = await engine_reply(engine, first)
    video = chat_video(clip(2.5, size=(100, 150)))
    later = [*first, ChatMessage("assistant", reply.text), ChatMessage("user", "And now?", videos=(video,))]
    layout = engine.loaded.prompt.build(later).layout
    assert layout is not None and len(layout.videos) == 2
    result = await engine_reply(engine, later)
    assert layout.videos[0][1] <= result.cached_tokens <= layout.videos[1][0]
    assert result.token_ids == generated(engine, later)


def test_the_prompt_holds_the_clip_as_video_tokens(engine: LocalEngine) -> None:
    """Five frames make 3 temporal patches (the last repeating the fifth frame), one video token per merged
    patch of each, typed as video; LLaVA-OneVision's, five frames of pooled tokens and a newline. The layout
    spans them (so held KV is keyed by the clip)."""
    inputs = engine.loaded.prompt.build(clip_messages())
    if "video_grid_thw" in inputs.extras:
        ((t, h, w),) = inputs.extras["video_grid_thw"].tolist()
        assert t == 3 and int((inputs.extras["mm_token_type_ids"] == 2).sum()) == t * h * w // 4
    else:
        tokens = int((inputs.input_ids == engine.loaded.prompt.processor.video_token_id).sum())
        assert inputs.extras["pixel_values_videos"].shape[:2] == (1, 5) and tokens > 5 and (tokens - 1) % 5 == 0
    assert inputs.layout is not None and len(inputs.layout.videos) == 1


def test_counting_agrees_with_building(engine: LocalEngine) -> None:
    """A prompt with a clip counts the tokens it builds to."""
    messages = clip_messages()
    assert engine.loaded.prompt.count(messages) == engine.loaded.prompt.build(messages).prompt_tokens


def test_a_family_without_native_video_refuses_a_clip() -> None:
    """A builder with no native layout refuses a clip (`bad_video`) instead of dropping it."""
    loaded = load_model(str(cached_family("llava")), device="cpu")
    with pytest.raises(GatewayError) as caught:
        loaded.prompt.build(clip_messages())
    assert caught.value.code.value == "bad_video"


def test_clips_of_other_lengths_in_one_prompt(engine: LocalEngine) -> None:
    """Two clips of five and three frames in one prompt: LLaVA-OneVision refuses them (`bad_video`), its model taking
    a prompt's clips as one tensor of frames; the others lay out both."""
    videos = (chat_video(clip(seconds=2.5)), chat_video(clip(seconds=1.5)))
    messages = [ChatMessage("user", "What happens?", videos=videos)]
    if engine.loaded.prompt.family.video != "llava_onevision":
        assert engine.loaded.prompt.build(messages).layout is not None
        return
    with pytest.raises(GatewayError) as caught:
        engine.loaded.prompt.build(messages)
    assert caught.value.code.value == "bad_video"


def test_a_clips_key_holds_its_frames_times(engine: LocalEngine) -> None:
    """The same frames at other times (a live window's frames seen later) key another clip, so held KV of one never
    serves the other: Qwen3-VL and GLM-4.1V write the times in the prompt, Qwen2.5-VL spaces rotary positions by them."""
    video = chat_video(clip(seconds=2.0))
    later = replace(video, ts_ms=tuple(2 * ts for ts in video.ts_ms))
    layouts = [engine.loaded.prompt.build([ChatMessage("user", "?", videos=(v,))]).layout for v in (video, later)]
    assert layouts[0] is not None and layouts[1] is not None
    assert layouts[0].video_keys != layouts[1].video_keys


def test_a_template_without_a_video_part_reads_videos_as_frames() -> None:
    """A GLM-4V whose chat template writes no video part (the demo's, the tiny checkpoint's own) takes no clip: it
    reads videos as their frames, as before."""
    loaded = load_model(str(cached_family("glm4v")), device="cpu")
    assert loaded.prompt.video is None


def test_counting_lays_the_clip_out_once_for_the_generation_thread(engine: LocalEngine) -> None:
    """A clip laid out while the prompt is counted (the count pool) is found by the build that prefills it
    (the generation thread), which lays nothing out again."""
    builder = engine.loaded.prompt
    messages = clip_messages()
    misses = builder.clips.misses
    builder.for_another_thread().count(messages)
    hits = builder.clips.hits
    builder.build(messages)
    assert builder.clips.misses == misses + 1 and builder.clips.hits == hits + 1
