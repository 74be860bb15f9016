"""A prefill's first tokens reach their event loop as soon as they are sampled: not after the rest of the step
(the other prompts' prefills, the batch's decode), which a turn's first token once waited for."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.engine.contract import ChatMessage, SamplingParams
from gateway.engine.local.batch import Batch
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from tests.conftest import DemoDirs
from tests.unit.engine.test_batching import submit
from tests.unit.engine.test_engine import Collector

HANG_S = 60.0  # only a hang reaches this: the step goes on once the token is seen
PARAMS = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
SHORT = [ChatMessage("user", "hello")]
LONG = [ChatMessage("user", " ".join(["tell me about the sky and the sea"] * 12))]


@pytest.fixture
async def engine(demo_dirs: DemoDirs) -> AsyncIterator[LocalEngine]:
    # No held KV: each prompt is prefilled whole; no chunking, so prompts admitted together prefill at once.
    running = LocalEngine(load_model(demo_dirs.model), max_batch=8, kv_cache_bytes=0, prefill_chunk_tokens=0)
    running.start()
    yield running
    await asyncio.to_thread(running.stop)


class Seen:
    """Set from the event loop once any of `sinks` holds a token; the generation thread waits on it."""

    def __init__(self, sinks: list[Collector]) -> None:
        self.event, self.sinks, self.waited = threading.Event(), sinks, False

    async def watch(self) -> None:
        while not any(sink.deltas or sink.done.done() for sink in self.sinks):
            await asyncio.sleep(0.001)
        self.event.set()

    def wait(self) -> None:
        """On the generation thread: hold the step until the loop has the token (False after a hang)."""
        self.waited = True
        assert self.event.wait(HANG_S), "the first token had not reached its loop"


async def test_a_first_token_reaches_its_loop_before_the_batch_decodes(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step's decode waits until the turn's first token is on the loop: it was handed over right after sampling."""
    sink, _ = submit(engine, SHORT, PARAMS)
    seen = Seen([sink])
    decode = Batch.decode

    def decoding(batch: Batch, tokens: list[int]) -> Any:
        if not seen.waited:
            seen.wait()
        return decode(batch, tokens)

    monkeypatch.setattr(Batch, "decode", decoding)
    watcher = asyncio.create_task(seen.watch())
    result = await asyncio.wait_for(sink.done, HANG_S * 2)
    await watcher
    assert seen.waited and len(result.token_ids) == PARAMS.max_tokens


async def test_a_first_token_reaches_its_loop_before_the_next_prompts_prefill(engine: LocalEngine) -> None:
    """Two prompts admitted together in groups of their own: the second group's forward waits until the first
    group's token is on the loop."""
    prefills: list[int] = []
    sinks: list[Collector] = []
    seen = Seen(sinks)

    def before_forward(_: Any, args: Any, kwargs: dict[str, Any]) -> None:
        fed = kwargs.get("input_ids")
        if fed is not None and fed.shape[1] > 1:  # a prefill pass, not a decode step
            prefills.append(int(fed.shape[1]))
            if len(prefills) == 2:
                seen.wait()

    hook = engine.loaded.model.register_forward_pre_hook(before_forward, with_kwargs=True)
    try:
        # Submitted back to back: the idle engine gathers them into one step (engine_gather_ms).
        sinks.extend(submit(engine, messages, PARAMS)[0] for messages in (SHORT, LONG))
        watcher = asyncio.create_task(seen.watch())
        results = await asyncio.wait_for(asyncio.gather(*(sink.done for sink in sinks)), HANG_S * 2)
        await watcher
    finally:
        hook.remove()
    assert len(prefills) == 2, f"the two prompts were not prefilled in two groups: {prefills}"
    assert seen.waited and all(len(result.token_ids) == PARAMS.max_tokens for result in results)
