"""A text turn joining a decoding batch is prefilled a chunk per step, and the batch decodes between chunks;
joiners arriving at different steps share each step's one pass."""

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
from tests.unit.engine.test_batching import PROMPTS, alone, submit

CHUNK = 8
LONG = [ChatMessage("user", " ".join(["the red house on the left shows a small cat"] * 12))]
RUNNING = SamplingParams(temperature=0, max_tokens=1500, ignore_eos=True)


@pytest.fixture(params=[CHUNK, 0], ids=["chunked", "whole"])
async def engine(request: pytest.FixtureRequest, demo_dirs: DemoDirs) -> AsyncIterator[LocalEngine]:
    # No held KV: the joiner's prompt is prefilled in full each time.
    engine = LocalEngine(load_model(demo_dirs.model), max_batch=8, kv_cache_bytes=0, prefill_chunk_tokens=request.param)
    engine.start()
    yield engine
    await asyncio.to_thread(engine.stop)


def forward_widths(engine: LocalEngine) -> list[tuple[int, int]]:
    """The (rows, fed columns) of every forward pass the model runs from now on."""
    passes: list[tuple[int, int]] = []

    def record(_: Any, args: Any, kwargs: dict[str, Any]) -> None:
        passes.append(tuple(kwargs["input_ids"].shape))  # type: ignore[arg-type]

    engine.loaded.model.register_forward_pre_hook(record, with_kwargs=True)
    return passes


async def joined_while_decoding(engine: LocalEngine, params: SamplingParams) -> tuple[tuple[int, ...], list[tuple[int, int]]]:
    """LONG's tokens when it joins a decoding turn, and the forward passes from its arrival to its end."""
    running, running_request = submit(engine, PROMPTS[0], RUNNING)
    while len(running.deltas) < 2:
        await asyncio.sleep(0.001)
    passes = forward_widths(engine)
    joiner, _ = submit(engine, LONG, params)
    tokens = (await asyncio.wait_for(joiner.done, 60)).token_ids
    running_request.handle.cancel()
    await asyncio.wait_for(running.done, 60)
    return tokens, passes


async def test_decoding_continues_between_a_joiners_chunks(engine: LocalEngine) -> None:
    """A long prompt joining a decoding turn is fed CHUNK tokens per pass, each pass followed by a decode
    step of the running turn; its reply is exactly its reply alone. Off (0), it is fed in one pass."""
    params = SamplingParams(temperature=0, max_tokens=12)
    solo = await alone(engine, LONG, params)
    tokens, passes = await joined_while_decoding(engine, params)
    assert tokens == solo
    prompt = engine.loaded.prompt.build(LONG).prompt_tokens
    prefill = [i for i, (rows, columns) in enumerate(passes) if columns > 1]
    expected = -(-prompt // CHUNK) if engine._generation.joining.chunk_tokens else 1
    assert len(prefill) == expected and prompt > 4 * CHUNK
    assert sum(columns for rows, columns in (passes[i] for i in prefill)) == prompt
    assert all(passes[i + 1] == (1, 1) for i in prefill[:-1])  # the running turn decoded after each chunk


@pytest.mark.parametrize("engine", [CHUNK], indirect=True)
async def test_a_joiner_cancelled_between_chunks_ends_and_the_batch_goes_on(engine: LocalEngine) -> None:
    """Cancelled while its chunks are fed, a joiner ends as cancelled before its prompt is through, and the
    running turn keeps decoding."""
    running, running_request = submit(engine, PROMPTS[0], RUNNING)
    while len(running.deltas) < 2:
        await asyncio.sleep(0.001)
    passes = forward_widths(engine)
    joiner, joiner_request = submit(engine, LONG, SamplingParams(temperature=0, max_tokens=12))
    while not any(columns > 1 for _, columns in passes):
        await asyncio.sleep(0.001)
    joiner_request.handle.cancel()
    result = await asyncio.wait_for(joiner.done, 60)
    before = len(running.deltas)
    while len(running.deltas) < before + 3:
        await asyncio.sleep(0.001)
    running_request.handle.cancel()
    assert result.finish_reason == "cancelled" and result.completion_tokens == 0
    assert (await asyncio.wait_for(running.done, 60)).finish_reason == "cancelled"


@pytest.mark.parametrize("engine", [8 * CHUNK], indirect=True)
async def test_joiners_arriving_at_different_steps_share_one_pass_per_step(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two short prompts arriving while a long one is fed in chunks, once its tokens left fit beside them:
    the running turn waits for one prefill pass per step however many prompts join (they share the long
    one's last pass, where each short one used to cost a pass of its own), and every joiner's reply is
    exactly its reply alone."""
    params = SamplingParams(temperature=0, max_tokens=8)
    shorts = [[ChatMessage("user", "one")], PROMPTS[2]]
    solos = [await alone(engine, messages, params) for messages in [LONG, *shorts]]
    lengths = [engine.loaded.prompt.build(messages).prompt_tokens for messages in [LONG, *shorts]]
    # The long prompt's first chunk leaves it as many tokens as the longer short one: three such rows fit a chunk.
    chunk = lengths[0] - max(lengths[1:])
    monkeypatch.setattr(engine._generation.joining, "chunk_tokens", chunk)
    passes: list[tuple[str, int, int]] = []  # (decode or prefill, rows, columns) of every forward pass
    decode, inside, parked, go = Batch.decode, [False], threading.Event(), threading.Event()

    def decoding(batch: Batch, tokens: list[int]) -> Any:
        if engine._generation.joining.rows and not parked.is_set():  # after the long one's first chunk
            parked.set()
            go.wait()
        inside[0] = True
        try:
            return decode(batch, tokens)
        finally:
            inside[0] = False

    def record(_: Any, args: Any, kwargs: dict[str, Any]) -> None:
        passes.append(("decode" if inside[0] else "prefill", *kwargs["input_ids"].shape))

    monkeypatch.setattr(Batch, "decode", decoding)
    running, running_request = submit(engine, PROMPTS[0], RUNNING)
    while len(running.deltas) < 2:
        await asyncio.sleep(0.001)
    engine.loaded.model.register_forward_pre_hook(record, with_kwargs=True)
    joiners = [submit(engine, LONG, params)[0]]
    await asyncio.to_thread(parked.wait)
    joiners += [submit(engine, messages, params)[0] for messages in shorts]
    go.set()
    tokens = [(await asyncio.wait_for(joiner.done, 60)).token_ids for joiner in joiners]
    running_request.handle.cancel()
    await asyncio.wait_for(running.done, 60)
    assert tokens == solos
    kinds = [kind for kind, _, _ in passes]
    assert all(kinds[i] == "decode" for i in range(1, len(kinds)) if kinds[i - 1] == "prefill")  # one pass per step
    assert [shape for kind, *shape in passes if kind == "prefill"] == [[1, chunk], [3, max(lengths[1:])]]
    assert 3 * max(lengths[1:]) <= chunk


async def test_with_nobody_decoding_a_long_prompt_is_fed_a_chunk_at_a_time_and_a_short_turn_gets_in_between(
    engine: LocalEngine, request: pytest.FixtureRequest
) -> None:
    """An idle engine: a prompt longer than a chunk is fed a chunk per pass, not in one pass of all its tokens, and a
    short turn arriving during its first chunk is prefilled at the next step (its own pass, as an idle turn is), before
    the long prompt's last chunk: the short one waits for one chunk, not for the whole prompt. Chunking off (0), the
    long prompt is one pass and the short turn waits for it. Every reply is exactly its reply alone."""
    params = SamplingParams(temperature=0, max_tokens=4)
    short = [ChatMessage("user", "one")]
    solos = [await alone(engine, messages, params) for messages in (LONG, short)]
    lengths = [engine.loaded.prompt.build(messages).prompt_tokens for messages in (LONG, short)]
    chunked = request.node.callspec.params["engine"] > 0
    if chunked:  # a chunk the short prompt fits and the long one does not, three times over
        engine._generation.joining.chunk_tokens = lengths[0] // 3
    chunk = engine._generation.joining.chunk_tokens
    assert lengths[1] <= chunk < lengths[0] // 2 if chunked else chunk == 0
    passes: list[tuple[int, int]] = []
    parked, go = threading.Event(), threading.Event()

    def record(_: Any, args: Any, kwargs: dict[str, Any]) -> None:
        passes.append(tuple(kwargs["input_ids"].shape))  # type: ignore[arg-type]
        if len(passes) == 1:  # the long prompt's first pass: the short turn arrives during it
            parked.set()
            go.wait()

    hook = engine.loaded.model.register_forward_pre_hook(record, with_kwargs=True)
    sinks = [submit(engine, LONG, params)[0]]
    await asyncio.to_thread(parked.wait)
    sinks.append(submit(engine, short, params)[0])
    go.set()
    tokens = [(await asyncio.wait_for(sink.done, 60)).token_ids for sink in sinks]
    hook.remove()
    assert tokens == solos
    prefills = [shape for shape in passes if shape[1] > 1]
    if not chunked:
        assert prefills == [(1, lengths[0]), (1, lengths[1])]
        return
    long_passes = [i for i, shape in enumerate(passes) if shape == (1, chunk)]
    assert passes[0] == (1, chunk) and len(long_passes) == lengths[0] // chunk
    assert passes[1] == (1, lengths[1])  # the short turn's own pass, right after the long one's first chunk
    assert all(shape[1] <= chunk for shape in passes)
