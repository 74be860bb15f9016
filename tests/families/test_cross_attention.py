"""Llama 3.2 Vision in a batch: rows with 0, 1 and 2 images join and leave, each reply equal to its own alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.engine.contract import ChatMessage, SamplingParams
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from tests.conftest import chat_image
from tests.families.builders import cached_family
from tests.unit.engine.test_batching import alone, staggered, submit

RED, BLUE, GREEN = chat_image((220, 20, 20)), chat_image((20, 20, 220), (56, 90)), chat_image((20, 200, 20), (80, 60))
PROMPTS = [
    [ChatMessage("user", "Tell me about the sky.")],
    [ChatMessage("user", "What is in this picture?", (RED,))],
    [ChatMessage("user", "Compare them.", (BLUE, GREEN))],
    [ChatMessage("system", "Be terse."), ChatMessage("user", "hello world, a longer prompt than the others")],
    [ChatMessage("user", "And this one?", (GREEN,))],
]


@pytest.fixture
async def engine() -> AsyncIterator[LocalEngine]:
    running = LocalEngine(load_model(cached_family("mllama")), max_batch=8, queue_size=8)
    running.start()
    yield running
    await asyncio.to_thread(running.stop)


async def test_rows_join_and_leave_at_different_steps(engine: LocalEngine) -> None:
    """Staggered joins and different lengths: the image states and masks are padded, merged and cut per row."""
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (30, 12, 40, 8, 20)]
    solo = [await alone(engine, m, p) for m, p in zip(PROMPTS, params)]
    assert await staggered(engine, PROMPTS, params) == solo


async def test_held_text_prefix_joins_rows_with_images(engine: LocalEngine) -> None:
    """A follow-up reusing a finished text turn's KV joins a batch of image rows and still equals itself alone."""
    first = await asyncio.wait_for(submit(engine, PROMPTS[0], SamplingParams(temperature=0, max_tokens=10))[0].done, 60)
    follow_up = [*PROMPTS[0], ChatMessage("assistant", first.text), ChatMessage("user", "And at night?")]
    params = SamplingParams(temperature=0, max_tokens=15, ignore_eos=True)
    solo = await alone(engine, follow_up, params)
    image_row, _ = submit(engine, PROMPTS[2], SamplingParams(temperature=0, max_tokens=400, ignore_eos=True))
    while len(image_row.deltas) < 3:
        await asyncio.sleep(0.001)
    result = await asyncio.wait_for(submit(engine, follow_up, params)[0].done, 60)
    assert not image_row.done.done()  # the two decoded together
    assert result.token_ids == solo and result.cached_tokens > 0
    await asyncio.wait_for(image_row.done, 60)
