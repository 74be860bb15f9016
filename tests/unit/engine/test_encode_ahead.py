"""A live frame encoded on the vision tower while the engine is idle: its turn skips the tower; no running turn waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.engine.contract import ChatMessage, SamplingParams
from gateway.engine.local.encoder_meter import vision_tower
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from tests.conftest import DemoDirs, chat_image, wait_until
from tests.unit.engine.test_batching import PROMPTS, alone, submit

PARAMS = SamplingParams(temperature=0, max_tokens=6)
RUNNING = SamplingParams(temperature=0, max_tokens=1500, ignore_eos=True)
FRAMES = [chat_image((30 * n, 200 - 30 * n, 90), (96, 72), "JPEG") for n in range(4)]


def asked(frame: Any) -> list[ChatMessage]:
    return [ChatMessage("user", "What is in this picture?", (frame,))]


@pytest.fixture
async def engine(demo_dirs: DemoDirs) -> AsyncIterator[LocalEngine]:
    engine = LocalEngine(load_model(demo_dirs.model), max_batch=2)
    engine.start()
    yield engine
    await asyncio.to_thread(engine.stop)


async def test_a_frame_encoded_ahead_spares_its_turn_the_tower_and_changes_no_reply(
    engine: LocalEngine, demo_dirs: DemoDirs
) -> None:
    """On an idle engine, a processed frame handed to `encode_ahead` is encoded once and its output held; the turn
    showing it then runs no tower pass, and its greedy reply is that of an engine that encoded the frame in the turn."""
    held = len(engine.encoder_cache)
    await engine.prepare([FRAMES[0]])
    assert engine.encode_ahead([FRAMES[0]])
    await wait_until(lambda: len(engine.encoder_cache) == held + 1)
    passes = engine.encoder_meter.passes
    tokens = await alone(engine, asked(FRAMES[0]), PARAMS)
    assert engine.encoder_meter.passes == passes
    reference = LocalEngine(load_model(demo_dirs.model), max_batch=2)
    reference.start()
    try:
        assert await alone(reference, asked(FRAMES[0]), PARAMS) == tokens
    finally:
        await asyncio.to_thread(reference.stop)


async def test_nothing_is_encoded_ahead_while_a_turn_is_on_the_engine_and_few_wait(engine: LocalEngine) -> None:
    """Frames offered while a turn decodes wait for the engine to have nothing else to do: the tower runs for none of
    them between the turn's steps, and once the turn has ended for all of them in one pass. At most `max_batch` wait;
    a frame past that is refused (its turn encodes it)."""
    tower = vision_tower(engine.loaded.model)
    assert tower is not None
    active_at_passes: list[int] = []
    tower.register_forward_pre_hook(lambda *_: active_at_passes.append(engine._line.active))
    running, request = submit(engine, PROMPTS[0], RUNNING)
    while len(running.deltas) < 2:
        await asyncio.sleep(0.001)
    await engine.prepare(FRAMES[:3])
    assert [engine.encode_ahead([frame]) for frame in FRAMES[:3]] == [True, True, False]
    steps = len(running.deltas)
    while len(running.deltas) < steps + 8:  # eight of the running turn's steps, each followed by the errands
        await asyncio.sleep(0.001)
    assert active_at_passes == []
    held = len(engine.encoder_cache)
    request.handle.cancel()
    await asyncio.wait_for(running.done, 60)
    await wait_until(lambda: len(engine.encoder_cache) == held + 2)
    assert active_at_passes == [0]


async def test_an_engine_holding_no_encoder_outputs_takes_no_frame(demo_dirs: DemoDirs) -> None:
    """With no room for encoder outputs (`encoder_cache_bytes` 0) nothing could be held for the turn: no frame is taken."""
    engine = LocalEngine(load_model(demo_dirs.model), encoder_cache_bytes=0)
    assert not engine.encode_ahead([FRAMES[0]])
