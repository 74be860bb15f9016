"""The compiled decode step: the same greedy tokens as the eager one, and one compile per rows bucket, all at start-up."""

from __future__ import annotations

import asyncio
from collections import Counter

import torch
from torch._dynamo.utils import counters

from gateway.engine.contract import ChatMessage, GenerationRequest, SamplingParams
from gateway.engine.local import compiled_step
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from tests.conftest import DemoDirs
from tests.unit.engine.test_batching import staggered
from tests.unit.engine.test_engine import Collector

PROMPTS = [
    [ChatMessage("user", "Tell me about the sky.")],
    [ChatMessage("system", "Be terse."), ChatMessage("user", "hello world, a somewhat longer prompt than the others")],
    [ChatMessage("user", "one")],
]

# Past a buffer's first growth (kv.MIN_GROWTH tokens of room after the prompt): a growth must not recompile.
TOKENS = 80


def test_rows_are_padded_up_to_power_of_two_buckets() -> None:
    """Buckets are the powers of two below the batch's rows, then its rows; each count runs at the first that holds it."""
    assert compiled_step.buckets(16) == [1, 2, 4, 8, 16]
    assert compiled_step.buckets(12) == [1, 2, 4, 8, 12]
    assert [compiled_step.bucket_of(rows, 12) for rows in (1, 2, 3, 5, 9, 12)] == [1, 2, 4, 8, 12, 12]


def test_every_bucket_fits_dynamos_recompile_limit() -> None:
    """A step over many rows has more buckets than dynamo's default 8 compiles of one code object: the limit
    is raised to hold them all, so no bucket is left to eager."""
    step = compiled_step.CompiledDecode(object(), 1024)
    assert len(compiled_step.buckets(step.max_rows)) == 11 <= torch._dynamo.config.recompile_limit


async def replies(engine: LocalEngine) -> list[tuple[int, ...]]:
    """Each prompt's greedy tokens: alone, all three decoding together, then each joining the others' decoding."""
    params = SamplingParams(temperature=0, max_tokens=TOKENS, ignore_eos=True)

    async def run(messages: list[ChatMessage]) -> tuple[int, ...]:
        sink = Collector()
        engine.submit(GenerationRequest(messages=messages, params=params), sink)
        return (await asyncio.wait_for(sink.done, 600)).token_ids

    alone = [await run(messages) for messages in PROMPTS]
    together = list(await asyncio.gather(*(run(messages) for messages in PROMPTS)))
    return alone + together + await staggered(engine, PROMPTS, [params] * len(PROMPTS))


async def test_the_compiled_step_gives_the_eager_tokens_and_compiles_every_bucket_before_serving(demo_dirs: DemoDirs) -> None:
    """Start-up compiles one graph per bucket (1, 2 and 4 rows) before the generation thread runs; turns then
    decoded alone, three together and joining others' decoding (every bucket, KV buffers growing) give the eager
    step's greedy tokens, every decode step ran compiled, and serving compiled nothing: no graph added, dynamo's
    counter unmoved."""
    tokens = {}
    for mode in ("off", "decode"):
        engine = LocalEngine(load_model(demo_dirs.model), max_batch=4, kv_cache_bytes=0, compile_mode=mode)
        engine.start()
        compiled = engine._generation.compiled
        at_start = (compiled.graphs if compiled else 0, counters["stats"]["unique_graphs"])
        warm_up_steps = Counter(compiled.steps_at if compiled else ())
        try:
            tokens[mode] = await replies(engine)
        finally:
            await asyncio.to_thread(engine.stop)
    assert tokens["decode"] == tokens["off"]
    assert compiled is not None and not compiled.broken and compiled.warm
    assert at_start[0] == len(compiled_step.buckets(4)) == 3
    assert warm_up_steps == {1: 1, 2: 1, 4: 1} and set(compiled.steps_at - warm_up_steps) == {1, 2, 4}  # served at each
    assert (compiled.graphs, counters["stats"]["unique_graphs"]) == at_start


def test_models_the_step_cannot_serve_stay_eager(demo_dirs: DemoDirs) -> None:
    """Off gives no compiled step; an unknown mode is refused at start-up."""
    loaded = load_model(demo_dirs.model)
    assert compiled_step.for_model(loaded, "off", 4) is None
    try:
        compiled_step.for_model(loaded, "everything", 4)
    except ValueError as exc:
        assert "engine_compile" in str(exc)
    else:
        raise AssertionError("an unknown mode was taken")


async def test_a_model_the_compiler_fails_on_starts_and_decodes_eager(demo_dirs: DemoDirs) -> None:
    """A compile that fails at start-up's warm-up leaves the step broken (no bucket warmed, none compiled) and
    the engine serving turns on the eager step."""
    engine = LocalEngine(load_model(demo_dirs.model), max_batch=4, kv_cache_bytes=0, compile_mode="decode")
    compiled = engine._generation.compiled
    assert compiled is not None

    def failing(*args: object) -> None:
        raise RuntimeError("the compiler cannot take this model")

    compiled._forward = failing
    engine.start()
    try:
        sink, params = Collector(), SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
        engine.submit(GenerationRequest(messages=PROMPTS[0], params=params), sink)
        assert len((await asyncio.wait_for(sink.done, 600)).token_ids) == 4
    finally:
        await asyncio.to_thread(engine.stop)
    assert compiled.broken and not compiled.warm and compiled.graphs == compiled.steps == 0
