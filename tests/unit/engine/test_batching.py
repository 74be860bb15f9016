"""Step-level batching: turns join and leave the running batch, and batching never changes a reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.engine.contract import ChatImage, ChatMessage, EngineFull, GenerationRequest, SamplingParams
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from tests.conftest import DemoDirs, chat_image
from tests.unit.engine.test_engine import Collector


def image(color: tuple[int, int, int], size: tuple[int, int]) -> ChatImage:
    return chat_image(color, size)


PROMPTS = [
    [ChatMessage("user", "Tell me about the sky.")],
    [ChatMessage("user", "What is in this picture?", (image((200, 10, 10), (80, 60)),))],
    [ChatMessage("system", "Be terse."), ChatMessage("user", "hello world, a somewhat longer prompt than the others")],
    [ChatMessage("user", "Compare them.", (image((0, 0, 255), (112, 112)), image((0, 255, 0), (56, 90))))],
    [ChatMessage("user", "one")],
    [ChatMessage("user", "A question with café and 你好 in it?")],
]


@pytest.fixture
async def engine(demo_dirs: DemoDirs) -> AsyncIterator[LocalEngine]:
    running = LocalEngine(load_model(demo_dirs.model), max_batch=8, queue_size=8)
    running.start()
    yield running
    await asyncio.to_thread(running.stop)


def submit(engine: LocalEngine, messages: list[ChatMessage], params: SamplingParams) -> tuple[Collector, GenerationRequest]:
    sink = Collector()
    request = GenerationRequest(messages=messages, params=params)
    engine.submit(request, sink)
    return sink, request


async def alone(engine: LocalEngine, messages: list[ChatMessage], params: SamplingParams) -> tuple[int, ...]:
    sink, _ = submit(engine, messages, params)
    return (await asyncio.wait_for(sink.done, 60)).token_ids


async def staggered(engine: LocalEngine, prompts: list[list[ChatMessage]], params: list[SamplingParams]) -> list[tuple[int, ...]]:
    """Each prompt's tokens when they join one batch a few steps apart, in order."""
    sinks = []
    for messages, p in zip(prompts, params):
        sink, _ = submit(engine, messages, p)
        sinks.append(sink)
        while len(sink.deltas) < 3 and not sink.done.done():  # the batch takes a few steps before the next joins
            await asyncio.sleep(0.001)
    return [(await asyncio.wait_for(s.done, 60)).token_ids for s in sinks]


async def test_greedy_batched_equals_alone_with_staggered_joins(engine: LocalEngine) -> None:
    """Text and image turns joining the batch at different steps each get exactly their solo tokens."""
    lengths = [40, 25, 33, 18, 45, 29]
    params = [SamplingParams(temperature=0, max_tokens=n) for n in lengths]
    solo = [await alone(engine, m, p) for m, p in zip(PROMPTS, params)]
    assert await staggered(engine, PROMPTS, params) == solo


async def test_seeded_sampling_batched_equals_alone(engine: LocalEngine) -> None:
    """Each turn keeps its own seed and sampling parameters inside the batch."""
    params = [SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=20, seed=s) for s in (7, 8, 9)]
    solo = [await alone(engine, PROMPTS[i], p) for i, p in enumerate(params)]
    sinks = [submit(engine, PROMPTS[i], p)[0] for i, p in enumerate(params)]
    assert [(await asyncio.wait_for(s.done, 60)).token_ids for s in sinks] == solo


async def test_new_turn_does_not_wait_for_running_ones(engine: LocalEngine) -> None:
    """A short turn arriving during a long one finishes first: it joined at the next step."""
    long_sink, _ = submit(engine, PROMPTS[0], SamplingParams(temperature=0, max_tokens=1500))
    while not long_sink.deltas:
        await asyncio.sleep(0.001)
    short_sink, _ = submit(engine, PROMPTS[4], SamplingParams(temperature=0, max_tokens=3))
    short = await asyncio.wait_for(short_sink.done, 60)
    assert not long_sink.done.done()
    assert engine.load().active >= 1
    long_result = await asyncio.wait_for(long_sink.done, 60)
    assert short.completion_tokens == 3 and long_result.completion_tokens == 1500


async def test_cancelled_turn_leaves_and_others_continue(engine: LocalEngine) -> None:
    """Cancelling one turn of a running batch ends it at once; the others are unaffected."""
    params = SamplingParams(temperature=0, max_tokens=300)
    solo = await alone(engine, PROMPTS[2], params)
    victim, victim_request = submit(engine, PROMPTS[0], SamplingParams(temperature=0, max_tokens=1500))
    survivor, _ = submit(engine, PROMPTS[2], params)
    while not victim.deltas:
        await asyncio.sleep(0.001)
    victim_request.handle.cancel()
    cancelled = await asyncio.wait_for(victim.done, 60)
    assert cancelled.finish_reason == "cancelled" and cancelled.completion_tokens < 1500
    assert (await asyncio.wait_for(survivor.done, 60)).token_ids == solo


async def test_admission_queues_then_refuses(demo_dirs: DemoDirs) -> None:
    """Beyond max_batch turns wait with their position; beyond the waiting line, EngineFull."""
    engine = LocalEngine(load_model(demo_dirs.model), max_batch=2, queue_size=2)
    engine.start()
    try:
        lengths = [30, 200, 200, 200]  # the first slot frees early, so the last turn moves up
        sinks = [submit(engine, PROMPTS[0], SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))[0] for n in lengths]
        params = SamplingParams(temperature=0, max_tokens=200)
        with pytest.raises(EngineFull):
            submit(engine, PROMPTS[0], params)
        await asyncio.sleep(0)  # the first `queued` events are delivered with call_soon
        assert sinks[0].queued == [] and sinks[1].queued == []
        assert sinks[2].queued[0] == 1 and sinks[3].queued[0] == 2
        results = [await asyncio.wait_for(s.done, 60) for s in sinks]
        assert [r.completion_tokens for r in results] == lengths
        assert sinks[3].queued[-1] == 1  # it moved up before it started
    finally:
        await asyncio.to_thread(engine.stop)


async def test_adapters_mix_in_one_batch(demo_dirs: DemoDirs) -> None:
    """Base and adapter turns decode in the same batch, each with exactly its solo greedy tokens,
    and the adapter's reply differs from the base's."""
    engine = LocalEngine(load_model(demo_dirs.model, adapters={"tuned": str(demo_dirs.adapter)}), max_batch=4)
    engine.start()
    try:
        assert engine.adapters == ("tuned",)
        assert engine.encoder_cache.max_bytes == 0  # an adapter may adapt the vision tower: nothing held
        params = SamplingParams(temperature=0, max_tokens=24)

        async def run(adapter: str | None) -> tuple[int, ...]:
            sink = Collector()
            engine.submit(GenerationRequest(messages=PROMPTS[0], params=params, adapter=adapter), sink)
            return (await asyncio.wait_for(sink.done, 60)).token_ids

        base_alone, tuned_alone = await run(None), await run("tuned")
        together = await asyncio.gather(run(None), run("tuned"), run(None))
        assert base_alone != tuned_alone
        assert list(together) == [base_alone, tuned_alone, base_alone]
    finally:
        await asyncio.to_thread(engine.stop)
