"""Warm-ups on the local engine: a live question after its warm-up prefills only its text, and replies as it would cold."""

from __future__ import annotations

import asyncio

from gateway.engine.contract import ChatMessage, GenerationRequest, GenerationResult, SamplingParams
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from tests.conftest import DemoDirs, wait_until
from tests.unit.engine.test_engine import Collector
from tests.unit.engine.test_prefix_cache import engines, generate, picture

__all__ = ["engines"]  # the warm (reuse on) and cold (reuse off) engines on the demo model


async def warmed(engine: LocalEngine, messages: list[ChatMessage]) -> GenerationResult:
    sink = Collector()
    request = GenerationRequest(messages, SamplingParams(temperature=0, max_tokens=1), affinity="s", warm_up=True)
    engine.submit(request, sink)
    return await asyncio.wait_for(sink.done, 60)


async def test_a_question_after_its_warm_up_prefills_only_its_text_and_replies_as_cold(
    engines: tuple[LocalEngine, LocalEngine],
) -> None:
    """History, then a live turn's frames and markers: warmed up without the question, the question then
    reuses all of it (its cached tokens are the warm-up's prompt, less the turn's closing) and its greedy
    reply equals an engine's that holds nothing; the warm-up's entry is gone once used."""
    warm, cold = engines
    history = [ChatMessage("user", "What is on the table?", (picture(1),)), ChatMessage("assistant", "A box.")]
    await generate(warm, history[:1])
    frames = (picture(2), picture(3), picture(4))
    markers = "[camera, 12.500 s] [camera, 13.000 s] [camera, 13.500 s]"
    ahead = await warmed(warm, [*history, ChatMessage("user", f"{markers}\n", frames)])
    assert ahead.finish_reason == "length" and ahead.cached_tokens > 0  # it reused the history's KV in turn
    await wait_until(lambda: len(warm.prefix_cache) == 2)  # the history's turn and the warm-up (held after its done)
    question = [*history, ChatMessage("user", f"{markers}\nWhat moved?", frames)]
    answered, alone = await generate(warm, question), await generate(cold, question)
    assert answered.token_ids == alone.token_ids and alone.cached_tokens == 0
    assert answered.prompt_tokens - answered.cached_tokens <= 12  # its text and the turn's closing tokens
    assert len(warm.prefix_cache) == 2  # the warm-up's entry went at its hit; the question's came


async def test_a_warm_up_longer_than_a_chunk_is_dropped_unrun(demo_dirs: DemoDirs) -> None:
    """A warm-up that would prefill more than `prefill_chunk_tokens` (nothing of it held) ends `cancelled`
    without a pass, so a turn arriving meanwhile never waits for a long one; within a chunk it runs."""
    engine = LocalEngine(load_model(demo_dirs.model), prefill_chunk_tokens=16)
    engine.start()
    try:
        long = await warmed(engine, [ChatMessage("user", "tell me about the weather in the hills today " * 3)])
        assert long.finish_reason == "cancelled" and len(engine.prefix_cache) == 0
        short = await warmed(engine, [ChatMessage("user", "hi")])
        assert short.finish_reason == "length"
        await wait_until(lambda: len(engine.prefix_cache) == 1)
    finally:
        await asyncio.to_thread(engine.stop)
