"""The local engine on the demo model: sampling, stopping and usage, with no server in between."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from gateway.engine.contract import ChatMessage, GenerationRequest, GenerationResult, SamplingParams
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from tests.conftest import DemoDirs, chat_image


@dataclass
class Collector:
    deltas: list[str] = field(default_factory=list)
    done: asyncio.Future[GenerationResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    queued: list[int] = field(default_factory=list)

    def on_queued(self, position: int) -> None:
        self.queued.append(position)

    def on_token(self, text: str) -> None:
        self.deltas.append(text)

    def on_done(self, result: GenerationResult) -> None:
        self.done.set_result(result)


@pytest.fixture
async def engine(demo_dirs: DemoDirs) -> AsyncIterator[LocalEngine]:
    running = LocalEngine(load_model(demo_dirs.model))
    running.start()
    yield running
    await asyncio.to_thread(running.stop)


MESSAGES = [ChatMessage("system", "You are terse."), ChatMessage("user", "Describe the sky, please.")]


async def generate(
    engine: LocalEngine, params: SamplingParams, messages: list[ChatMessage] = MESSAGES
) -> tuple[GenerationResult, list[str]]:
    sink = Collector()
    engine.submit(GenerationRequest(messages=messages, params=params), sink)
    return await asyncio.wait_for(sink.done, 60), sink.deltas


async def test_greedy_is_deterministic(engine: LocalEngine) -> None:
    """Two greedy runs of the same prompt give the same tokens."""
    first, _ = await generate(engine, SamplingParams(temperature=0, max_tokens=24))
    second, _ = await generate(engine, SamplingParams(temperature=0, max_tokens=24))
    assert first.token_ids == second.token_ids and first.text == second.text


async def test_seeded_sampling_repeats_and_seeds_differ(engine: LocalEngine) -> None:
    """The same seed reproduces a sample; different seeds (almost surely) do not."""
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=24, seed=1234)
    a, _ = await generate(engine, params)
    b, _ = await generate(engine, params)
    others = [(await generate(engine, SamplingParams(temperature=1.0, max_tokens=24, seed=s)))[0].token_ids for s in (1, 2, 3)]
    assert a.token_ids == b.token_ids
    assert any(o != a.token_ids for o in others)


async def test_temperature_is_honoured(engine: LocalEngine) -> None:
    """Unseeded sampling at temperature 1 varies between runs (the seed's top_k=1 made it greedy)."""
    runs = {(await generate(engine, SamplingParams(temperature=1.0, max_tokens=16)))[0].token_ids for _ in range(4)}
    assert len(runs) > 1


async def test_max_tokens_gives_length(engine: LocalEngine) -> None:
    """A turn cut by max_tokens ends with finish_reason length and exactly max_tokens tokens."""
    result, _ = await generate(engine, SamplingParams(temperature=0, max_tokens=7))
    assert result.finish_reason == "length" and result.completion_tokens == 7


async def test_usage_counts_actual_tokens(engine: LocalEngine) -> None:
    """prompt_tokens is the tokenized prompt's length and completion_tokens the generated ids."""
    result, deltas = await generate(engine, SamplingParams(temperature=0, max_tokens=12))
    assert result.prompt_tokens == await engine.count_prompt_tokens(MESSAGES)
    assert result.prompt_tokens == engine.loaded.prompt.build(MESSAGES).prompt_tokens
    assert result.completion_tokens == len(result.token_ids) == 12
    assert "".join(deltas) == result.text
    assert result.text == engine.loaded.tokenizer.decode(list(result.token_ids), skip_special_tokens=True)


async def test_stop_string_ends_turn_and_is_not_sent(engine: LocalEngine) -> None:
    """A stop string taken from the greedy reply cuts it there, and the stop text is not streamed."""
    full, _ = await generate(engine, SamplingParams(temperature=0, max_tokens=40))
    words = full.text.split()
    assert len(words) >= 3, full.text
    stop = words[2]
    cut = full.text.index(stop)
    result, deltas = await generate(engine, SamplingParams(temperature=0, max_tokens=40, stop=(stop,)))
    assert result.finish_reason == "stop"
    assert result.text == full.text[:cut]
    assert stop not in "".join(deltas)


async def test_cancel_stops_early(engine: LocalEngine) -> None:
    """Cancelling after the first token ends the turn long before max_tokens."""
    sink = Collector()
    first_token = asyncio.Event()
    original = sink.on_token

    def on_token(text: str) -> None:
        original(text)
        first_token.set()

    sink.on_token = on_token  # type: ignore[method-assign]
    request = GenerationRequest(messages=MESSAGES, params=SamplingParams(temperature=0, max_tokens=4000))
    handle = engine.submit(request, sink)
    await asyncio.wait_for(first_token.wait(), 30)
    handle.cancel()
    result = await asyncio.wait_for(sink.done, 30)
    assert result.finish_reason == "cancelled"
    assert 1 <= result.completion_tokens < 4000


async def test_images_reach_the_prompt(engine: LocalEngine) -> None:
    """Two images in one turn each add their merged-patch count of image tokens to the prompt."""
    image = chat_image((10, 200, 10), (112, 112))
    with_images = [ChatMessage("user", "compare", (image, image))]
    without = [ChatMessage("user", "compare")]
    inputs = engine.loaded.prompt.build(with_images)
    image_token_id = engine.loaded.prompt.image_token_id
    per_image = (112 // 14) ** 2 // 4  # 8x8 patches, merged 2x2
    assert int((inputs.input_ids == image_token_id).sum()) == 2 * per_image
    assert inputs.prompt_tokens == await engine.count_prompt_tokens(without) + 2 * (per_image + 2)
    result, _ = await generate(engine, SamplingParams(temperature=0, max_tokens=8), with_images)
    assert result.finish_reason in ("length", "stop") and result.prompt_tokens == inputs.prompt_tokens


async def test_generation_error_ends_turn_and_engine_survives(engine: LocalEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception inside generation gives an error result, and the next turn works."""
    original = engine.loaded.prompt.build

    def broken(messages: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(engine.loaded.prompt, "build", broken)
    failed, _ = await generate(engine, SamplingParams(temperature=0, max_tokens=4))
    monkeypatch.setattr(engine.loaded.prompt, "build", original)
    ok, _ = await generate(engine, SamplingParams(temperature=0, max_tokens=4))
    assert failed.finish_reason == "error" and "boom" not in (failed.error or "")
    assert ok.finish_reason == "length"
