"""Warm-ups on the local engine: a live question after its warm-up prefills only its text, and replies as it would cold."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.engine.contract import ChatMessage, GenerationRequest, GenerationResult, SamplingParams
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from tests.conftest import DemoDirs, wait_until
from tests.unit.engine.test_engine import Collector
from tests.unit.engine.test_prefix_cache import GREEDY, engines, generate, picture

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
    answered, alone = await asked(warm, question, "s"), await generate(cold, question)
    assert answered.token_ids == alone.token_ids and alone.cached_tokens == 0
    assert answered.prompt_tokens - answered.cached_tokens <= 12  # its text and the turn's closing tokens
    assert len(warm.prefix_cache) == 2  # the warm-up's entry went at its hit; the question's came


async def asked(engine: LocalEngine, messages: list[ChatMessage], session: str) -> GenerationResult:
    sink = Collector()
    engine.submit(GenerationRequest(messages, GREEDY, affinity=session), sink)
    return await asyncio.wait_for(sink.done, 60)


async def cold_reply(demo_dirs: DemoDirs, messages: list[ChatMessage]) -> tuple[int, ...]:
    """The greedy reply of an engine holding nothing (reuse off)."""
    cold = LocalEngine(load_model(demo_dirs.model), kv_cache_bytes=0)
    cold.start()
    try:
        return (await generate(cold, messages)).token_ids
    finally:
        await asyncio.to_thread(cold.stop)


LONG = [ChatMessage("system", "You are terse."), ChatMessage("user", "tell me about the weather in the hills today " * 12)]


async def test_with_chunking_off_a_warm_up_longer_than_its_one_pass_allows_is_dropped_unrun(demo_dirs: DemoDirs) -> None:
    """With chunking off a warm-up is fed in one pass, which a turn arriving would wait for: one that would prefill
    more than `_WARM_UP_TOKENS` (nothing of it held) ends `cancelled` without a pass; a short one runs."""
    engine = LocalEngine(load_model(demo_dirs.model), prefill_chunk_tokens=0)
    engine.start()
    try:
        long = await warmed(engine, [ChatMessage("user", "tell me about the weather in the hills today " * 40)])
        assert long.finish_reason == "cancelled" and len(engine.prefix_cache) == 0
        short = await warmed(engine, [ChatMessage("user", "hi")])
        assert short.finish_reason == "length"
        await wait_until(lambda: len(engine.prefix_cache) == 1)
    finally:
        await asyncio.to_thread(engine.stop)


class Passes:
    """The columns of each forward pass of the model; `hold_at(n)`: its n-th pass waits, on the generation thread,
    until `release()`, so a test lines a turn up while a warm-up is known to be half fed."""

    def __init__(self, engine: LocalEngine) -> None:
        self.columns: list[int] = []
        self.reached, self.released = threading.Event(), threading.Event()
        self.hold = 0
        engine.loaded.model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        inputs = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        self.columns.append(int((inputs if inputs is not None else args[0]).shape[1]))
        if len(self.columns) == self.hold:
            self.reached.set()
            self.released.wait(60)

    def hold_at(self, n: int) -> None:
        """The model's n-th pass from now waits, once begun, until `release` (set before the work is submitted)."""
        self.reached.clear()
        self.released.clear()
        self.hold = len(self.columns) + n

    async def held(self) -> None:
        """Until the pass `hold_at` named has begun (it must: the work is longer than that)."""
        assert await asyncio.to_thread(self.reached.wait, 60), "the held pass never came"

    def release(self) -> None:
        self.released.set()


@pytest.fixture
async def chunked(demo_dirs: DemoDirs) -> AsyncIterator[LocalEngine]:
    engine = LocalEngine(load_model(demo_dirs.model), max_batch=4, prefill_chunk_tokens=16)
    engine.start()
    yield engine
    await asyncio.to_thread(engine.stop)


def order_of_ends(turn: Collector, warming: Collector) -> list[str]:
    """The order the turn's and the warm-up's ends reach the loop (the engine's relay keeps the thread's order)."""
    ended: list[str] = []
    turn.done.add_done_callback(lambda _: ended.append("turn"))
    warming.done.add_done_callback(lambda _: ended.append("warm-up"))
    return ended


def warm_up(engine: LocalEngine, messages: list[ChatMessage], session: str) -> tuple[Collector, GenerationRequest]:
    sink = Collector()
    request = GenerationRequest(messages, SamplingParams(temperature=0, max_tokens=1), affinity=session, warm_up=True)
    engine.submit(request, sink)
    return sink, request


async def turn_during_warm_up(engine: LocalEngine) -> tuple[Passes, Collector, Collector, list[str]]:
    """Another session's short turn submitted while a long warm-up is held at its second pass, then released: the
    passes, the warm-up's sink, the turn's, and the order their ends reach the loop."""
    passes = Passes(engine)
    passes.hold_at(2)
    sink, _ = warm_up(engine, LONG, "warming")
    await passes.held()
    turn = Collector()
    hi = GenerationRequest([ChatMessage("user", "hi")], SamplingParams(temperature=0, max_tokens=3), affinity="other")
    engine.submit(hi, turn)
    ended = order_of_ends(turn, sink)
    passes.release()
    return passes, sink, turn, ended


async def test_a_long_warm_up_is_fed_a_chunk_at_a_time_and_its_question_prefills_only_its_text(
    chunked: LocalEngine, demo_dirs: DemoDirs
) -> None:
    """With chunking on, a warm-up longer than a chunk runs (a session's prompt re-prefilled ahead after a trim): a
    chunk per pass, to the end; its question then reuses all of it and replies as an engine holding nothing."""
    passes = Passes(chunked)
    ahead = await warmed(chunked, LONG)
    assert ahead.finish_reason == "length" and ahead.prompt_tokens > 4 * 16
    assert max(passes.columns) == 16 and len(passes.columns) == -(-ahead.prompt_tokens // 16)
    await wait_until(lambda: len(chunked.prefix_cache) == 1)
    question = [*LONG[:1], ChatMessage("user", LONG[1].text + "Is it raining?")]
    answered = await asked(chunked, question, "s")
    assert answered.token_ids == await cold_reply(demo_dirs, question)
    assert answered.prompt_tokens - answered.cached_tokens <= 12


async def test_a_long_warm_up_gives_way_to_a_turn_and_goes_on_from_what_it_was_fed(chunked: LocalEngine) -> None:
    """A turn arriving while a long warm-up is fed does not wait for the rest of it: the turn ends first, and the
    warm-up then goes on from the KV it had (its cached tokens are the chunks fed before it gave way)."""
    passes, sink, turn, ended = await turn_during_warm_up(chunked)
    answered = await asyncio.wait_for(turn.done, 60)
    assert answered.finish_reason == "length"
    ahead = await asyncio.wait_for(sink.done, 60)
    await asyncio.sleep(0)  # the futures' callbacks run at the loop's next turn
    assert ended == ["turn", "warm-up"]
    assert ahead.finish_reason == "length" and ahead.cached_tokens >= 2 * 16
    assert sum(columns for columns in passes.columns if columns == 16) <= ahead.prompt_tokens  # nothing fed twice


async def test_a_long_warm_up_cancelled_or_met_by_its_own_turn_leaves_what_it_was_fed_to_that_turn(
    chunked: LocalEngine,
) -> None:
    """Its session's turn arriving ends a long warm-up under way (it is not resumed after), and the turn goes on
    from the KV the warm-up was fed; one cancelled while fed keeps that KV too."""
    passes = Passes(chunked)
    passes.hold_at(2)
    sink, request = warm_up(chunked, LONG, "s")
    await passes.held()
    request.handle.cancel()
    passes.release()
    assert (await asyncio.wait_for(sink.done, 60)).finish_reason == "cancelled"
    await wait_until(lambda: len(chunked.prefix_cache) == 1)  # what it was fed: two chunks
    passes.hold_at(2)
    sink, _ = warm_up(chunked, LONG, "s")
    await passes.held()
    question = [*LONG[:1], ChatMessage("user", LONG[1].text + "Is it raining?")]
    turn = Collector()
    chunked.submit(GenerationRequest(question, SamplingParams(temperature=0, max_tokens=3), affinity="s"), turn)
    passes.release()
    answered = await asyncio.wait_for(turn.done, 60)
    assert (await asyncio.wait_for(sink.done, 60)).finish_reason == "cancelled"
    assert answered.cached_tokens >= 4 * 16  # the first warm-up's two chunks, then the second one's two more


async def test_a_warm_up_with_pictures_that_gave_way_part_way_leaves_its_question_the_reply_it_has_cold(
    chunked: LocalEngine, demo_dirs: DemoDirs
) -> None:
    """A live session's history re-prefilled ahead (pictures in it, 3-D rotary positions) gives way to another
    session's turn part-way, is held up to its last whole picture, goes on from there, and its question then replies
    as on an engine holding nothing."""
    history = [ChatMessage("user", "What is on the table?", (picture(1), picture(2))), ChatMessage("assistant", "A box.")]
    frames = (picture(3), picture(4))
    ahead = [*history, ChatMessage("user", "[camera, 1.000 s] [camera, 1.500 s]\n", frames)]
    passes = Passes(chunked)
    passes.hold_at(3)
    sink, _ = warm_up(chunked, ahead, "s")
    await passes.held()
    turn = Collector()
    chunked.submit(
        GenerationRequest([ChatMessage("user", "hi")], SamplingParams(temperature=0, max_tokens=3), affinity="o"), turn
    )
    passes.release()
    await asyncio.wait_for(turn.done, 60)
    warmed_up = await asyncio.wait_for(sink.done, 60)
    assert warmed_up.finish_reason == "length" and 0 < warmed_up.cached_tokens < warmed_up.prompt_tokens
    question = [*history, ChatMessage("user", "[camera, 1.000 s] [camera, 1.500 s]\nWhat moved?", frames)]
    answered = await asked(chunked, question, "s")
    assert answered.token_ids == await cold_reply(demo_dirs, question)
    assert answered.prompt_tokens - answered.cached_tokens <= 12


async def test_with_one_batch_place_a_long_warm_up_gives_way_to_a_turn_still_in_the_line(demo_dirs: DemoDirs) -> None:
    """With `max_batch` 1 the warm-up's row holds the one place, so the turn is not admitted while it is fed: the
    warm-up gives way to a turn waiting in the line as well, and the turn ends first."""
    engine = LocalEngine(load_model(demo_dirs.model), max_batch=1, prefill_chunk_tokens=16)
    engine.start()
    try:
        _, sink, turn, ended = await turn_during_warm_up(engine)
        await asyncio.wait_for(turn.done, 60)
        assert (await asyncio.wait_for(sink.done, 60)).finish_reason == "length"
        await asyncio.sleep(0)
        assert ended == ["turn", "warm-up"]
    finally:
        await asyncio.to_thread(engine.stop)


async def test_a_long_warm_up_under_way_ends_cancelled_when_the_engine_stops(demo_dirs: DemoDirs) -> None:
    """Stopping lets running turns finish, but a warm-up is no turn: one half fed ends `cancelled` at the next pass's
    end, and the generation thread stops without feeding it further."""
    engine = LocalEngine(load_model(demo_dirs.model), prefill_chunk_tokens=16)
    engine.start()
    passes = Passes(engine)
    passes.hold_at(2)
    sink, _ = warm_up(engine, LONG, "warming")
    await passes.held()
    stopped = asyncio.ensure_future(asyncio.to_thread(engine.stop))
    await wait_until(lambda: engine._line.stopping)
    passes.release()
    assert (await asyncio.wait_for(sink.done, 60)).finish_reason == "cancelled"
    await stopped
    assert len(passes.columns) == 2
