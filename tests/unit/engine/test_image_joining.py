"""Image prompts join the chunked rows as embeddings: the running turns decode between a long image prompt's
chunks, and image prompts admitted together share each pass."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.engine.contract import ChatMessage, SamplingParams
from gateway.engine.local.batch import Batch
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.joining import new_image_tokens
from gateway.engine.local.loader import load_model
from tests.conftest import DemoDirs, chat_image
from tests.unit.engine.test_batching import PROMPTS, alone, submit

CHUNK = 8
RUNNING = SamplingParams(temperature=0, max_tokens=1500, ignore_eos=True)
PARAMS = SamplingParams(temperature=0, max_tokens=8)
LONG = [ChatMessage("user", "Describe both pictures, then compare them.", (chat_image((200, 10, 10), (112, 112)),) * 2)]
PICTURES = [[ChatMessage("user", f"What is in picture {n}?", (chat_image((40 * n, 90, 200), (112, 56)),))] for n in (1, 2)]


@pytest.fixture
async def engine(demo_dirs: DemoDirs) -> AsyncIterator[LocalEngine]:
    # No held KV and no held encoder outputs: every prompt is prefilled, and its images encoded, in full.
    engine = LocalEngine(
        load_model(demo_dirs.model), max_batch=8, kv_cache_bytes=0, encoder_cache_bytes=0, prefill_chunk_tokens=CHUNK
    )
    engine.start()
    yield engine
    await asyncio.to_thread(engine.stop)


class Passes:
    """(decode or prefill, rows, columns) of every forward pass over the cache from now on (the stopped forward
    that only splices a prompt's images into its embeddings passes no cache); `hold` parks the generation
    thread at its next decode step until `release`, so that turns submitted meanwhile are admitted together."""

    def __init__(self, engine: LocalEngine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[str, int, int]] = []
        self.open, self.parked, self.inside = threading.Event(), threading.Event(), False
        self.open.set()
        decode = Batch.decode

        def decoding(batch: Batch, tokens: list[int]) -> Any:
            self.parked.set()
            self.open.wait()
            self.inside = True
            try:
                return decode(batch, tokens)
            finally:
                self.inside = False

        monkeypatch.setattr(Batch, "decode", decoding)
        engine.loaded.model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, _: Any, args: Any, kwargs: dict[str, Any]) -> None:
        fed = kwargs.get("input_ids")
        rows, columns = (fed if fed is not None else kwargs["inputs_embeds"]).shape[:2]
        if kwargs.get("cache") is not None:
            self.seen.append(("decode" if self.inside else "prefill", int(rows), int(columns)))

    async def hold(self) -> None:
        self.open.clear()
        self.parked.clear()
        await asyncio.to_thread(self.parked.wait)
        self.seen.clear()

    def release(self) -> None:
        self.open.set()


async def decoding_turn(engine: LocalEngine) -> Any:
    running, request = submit(engine, PROMPTS[0], RUNNING)
    while len(running.deltas) < 2:
        await asyncio.sleep(0.001)
    return running, request


async def stop(running: Any, request: Any) -> None:
    request.handle.cancel()
    await asyncio.wait_for(running.done, 60)


async def test_a_long_image_prompt_costs_a_pass_per_chunk_with_a_decode_step_between(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A two-image prompt joining a decoding turn has its images encoded in one step, then is fed CHUNK columns
    per pass, ceil(tokens / CHUNK) passes, each followed by the running turn's decode step: the running turn
    never waits for the whole image prompt, nor for its vision tower and a chunk together. Its reply is
    exactly its reply alone."""
    solo = await alone(engine, LONG, PARAMS)
    running, request = await decoding_turn(engine)
    watch = Passes(engine, monkeypatch)
    await watch.hold()
    joiner, _ = submit(engine, LONG, PARAMS)
    watch.release()
    tokens = (await asyncio.wait_for(joiner.done, 60)).token_ids
    await stop(running, request)
    assert tokens == solo
    prompt = engine.loaded.prompt.build(LONG).prompt_tokens
    passes = watch.seen
    prefill = [i for i, (kind, _, _) in enumerate(passes) if kind == "prefill"]
    assert len(prefill) == -(-prompt // CHUNK) and prompt > 4 * CHUNK
    assert [passes[i][1:] for i in prefill] == [(1, CHUNK)] * (prompt // CHUNK) + [(1, prompt % CHUNK)] * (prompt % CHUNK > 0)
    assert all(passes[i + 1][0] == "decode" for i in prefill[:-1])  # the running turn decoded after each chunk
    # The vision tower is a step's work of its own: after the step it ran in (the held one), the running
    # turn decodes once more before the first chunk.
    assert [kind for kind, _, _ in passes[: prefill[0]]] == ["decode", "decode"]


async def test_a_small_image_prompts_vision_tower_runs_in_the_step_of_its_first_chunk(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-picture prompt whose image tokens are at most half a chunk, joining a decoding turn: its vision
    tower and its first chunk run in one step (no decode step between them, where a big tower has one: the
    test above), and its reply is exactly its reply alone."""
    monkeypatch.setattr(engine._generation.joining, "chunk_tokens", 8 * CHUNK)
    solo = await alone(engine, PICTURES[0], PARAMS)
    inputs = engine.loaded.prompt.build(PICTURES[0])
    running, request = await decoding_turn(engine)
    watch = Passes(engine, monkeypatch)
    await watch.hold()
    joiner, _ = submit(engine, PICTURES[0], PARAMS)
    watch.release()
    tokens = (await asyncio.wait_for(joiner.done, 60)).token_ids
    await stop(running, request)
    assert tokens == solo
    first = [kind for kind, _, _ in watch.seen].index("prefill")
    assert [kind for kind, _, _ in watch.seen[:first]] == ["decode"]  # the held step's decode only
    assert 0 < new_image_tokens(inputs, 0) <= 4 * CHUNK


@pytest.mark.parametrize("decoding", [False, True], ids=["idle", "beside-a-decoding-turn"])
async def test_image_prompts_admitted_together_share_one_pass(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch, decoding: bool
) -> None:
    """Two image prompts admitted in the same step, whose tokens fit one chunk between them, are prefilled in
    one pass of two rows (each used to be a pass of its own), with nobody decoding or beside a decoding turn;
    each reply is exactly its reply alone."""
    monkeypatch.setattr(engine._generation.joining, "chunk_tokens", 8 * CHUNK)
    solos = [await alone(engine, messages, PARAMS) for messages in PICTURES]
    lengths = [engine.loaded.prompt.build(messages).prompt_tokens for messages in PICTURES]
    running = await decoding_turn(engine) if decoding else None
    passes = Passes(engine, monkeypatch)
    if running is not None:
        await passes.hold()
    sinks = [submit(engine, messages, PARAMS)[0] for messages in PICTURES]  # one burst: admitted in one step
    passes.release()
    tokens = [(await asyncio.wait_for(sink.done, 60)).token_ids for sink in sinks]
    if running is not None:
        await stop(*running)
    assert tokens == solos
    assert [pass_[1:] for pass_ in passes.seen if pass_[0] == "prefill"] == [(2, max(lengths))]
    assert max(lengths) <= 4 * CHUNK  # each fits its share of the pass
