"""The engine profile: the generation thread's time by phase, adding up to its wall time, on /metrics."""

from __future__ import annotations

import asyncio
import time

from gateway.engine.contract import SamplingParams
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from gateway.engine.local.profile import PHASES, PhaseClock
from gateway.metrics import Metrics
from tests.conftest import DemoDirs
from tests.unit.engine.test_batching import PROMPTS, alone


def test_laps_split_the_whole_time_among_phases() -> None:
    """Each lap charges the time since the previous one to its phase, so the totals add up to the span."""
    started = time.perf_counter()
    clock = PhaseClock()
    clock.lap("decode")
    clock.lap("sampling")
    clock.lap("decode")
    totals = clock.totals()
    assert set(totals) == set(PHASES) and totals["prefill"] == 0.0
    assert 0 < sum(totals.values()) <= time.perf_counter() - started


async def test_a_turn_shows_in_the_engines_phases_and_metrics(demo_dirs: DemoDirs) -> None:
    """After a turn the engine's load reports time prefilling, decoding and sampling, and /metrics exports it."""
    engine = LocalEngine(load_model(demo_dirs.model))
    engine.start()
    try:
        await alone(engine, PROMPTS[0], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
        phases = engine.load().phase_seconds
        metrics = Metrics()
        metrics.watch_engine(engine.load)
        exported = metrics.registry.get_sample_value("gateway_engine_seconds_total", {"phase": "decode"})
    finally:
        await asyncio.to_thread(engine.stop)
    assert phases["prefill"] > 0 and phases["decode"] > 0 and phases["sampling"] > 0
    assert exported is not None and exported >= phases["decode"]
