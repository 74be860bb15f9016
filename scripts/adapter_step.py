"""The generation thread's longest step while adapters load and unload, against the same load without: turns
decode on the demo model while a LoRA adapter is loaded and unloaded (weights read on the
worker thread, swapped in between two steps). A step here is the time from one decode step's end to the next's,
so an adapter swap between them counts in it. One load and one unload per round, or back to back with --churn;
with --beside, another adapter stays loaded throughout (the churned one joins its layers instead of being the
model's first). Point PYTHONPATH at the code.

    PYTHONPATH=$PWD .venv/bin/python scripts/adapter_step.py [--turns 4] [--tokens 300] [--rank 64] [--size small]
        [--churn] [--beside]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.engine.contract import GenerationRequest, GenerationResult, SamplingParams
from gateway.engine.demo import write_demo_adapter, write_demo_model
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model


class Sink:
    def __init__(self) -> None:
        self.done: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()

    def on_queued(self, position: int) -> None:
        pass

    def on_token(self, text: str) -> None:
        pass

    def on_done(self, result: GenerationResult) -> None:
        self.done.set_result(result)


class StepClock:
    """The end of each decode step, stamped on the generation thread; and each errand pass's own length, in wall
    time and in the generation thread's CPU time (which a busy machine's scheduler does not stretch)."""

    def __init__(self, engine: LocalEngine) -> None:
        self.ends: list[float] = []
        self.swaps_ms: list[float] = []
        self.swaps_cpu_ms: list[float] = []
        generation = engine._generation
        step, errands = generation._step, generation._run_errands

        def timed_step(batch: Any) -> None:
            step(batch)
            self.ends.append(time.perf_counter())

        def timed_errands(batch: Any) -> None:
            start, cpu = time.perf_counter(), time.thread_time()
            waiting = bool(generation.line._errands)
            errands(batch)
            if waiting:
                self.swaps_ms.append((time.perf_counter() - start) * 1000)
                self.swaps_cpu_ms.append((time.thread_time() - cpu) * 1000)

        generation._step = timed_step  # type: ignore[method-assign]
        generation._run_errands = timed_errands  # type: ignore[method-assign]

    def gaps_ms(self, since: int) -> list[float]:
        ends = self.ends[since:]
        return [(b - a) * 1000 for a, b in itertools.pairwise(ends)]


async def decode(engine: LocalEngine, turns: int, tokens: int) -> list[GenerationResult]:
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    sinks = [Sink() for _ in range(turns)]
    for i, sink in enumerate(sinks):
        engine.submit(GenerationRequest([_message(i)], params), sink)
    return list(await asyncio.gather(*(sink.done for sink in sinks)))


def _message(i: int) -> Any:
    from gateway.engine.contract import ChatMessage

    return ChatMessage("user", f"Tell me story number {i}.")


async def churn(engine: LocalEngine, adapter: Path, running: asyncio.Future[Any], again: bool) -> int:
    """Load and unload the adapter once while the turns decode (or, `again`, until they are done); how many loads."""
    loads = 0
    while not running.done() and (again or not loads):
        await engine.load_adapter("churn", str(adapter))
        await engine.unload_adapter("churn")
        loads += 1
    return loads


def summary(gaps: list[float]) -> dict[str, float]:
    return {"steps": len(gaps), "median_ms": round(statistics.median(gaps), 2), "max_ms": round(max(gaps), 2)}


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="adapter-step-"))
    model = write_demo_model(root / "model", size=args.size)
    adapter = write_demo_adapter(model, root / "adapter", rank=args.rank)
    engine = LocalEngine(load_model(model), max_batch=max(8, args.turns), gather_ms=50)
    clock = StepClock(engine)
    engine.start()
    try:
        if args.beside:
            await engine.load_adapter("kept", str(adapter))
        await decode(engine, args.turns, 8)  # warm up
        rounds: dict[str, list[float]] = {"without": [], "while_loading": []}
        loads = 0
        for _ in range(args.rounds):  # alternating, so a neighbour's load on the machine falls on both alike
            since = len(clock.ends)
            await decode(engine, args.turns, args.tokens)
            rounds["without"] += clock.gaps_ms(since)
            since = len(clock.ends)
            running = asyncio.ensure_future(decode(engine, args.turns, args.tokens))
            loads += await churn(engine, adapter, running, args.churn)
            await running
            rounds["while_loading"] += clock.gaps_ms(since)
        weights = (adapter / "adapter_model.safetensors").stat().st_size
        report = {name: summary(gaps) for name, gaps in rounds.items()}
        swaps = clock.swaps_ms
        report["swaps"] = {"count": len(swaps), "loads": loads, "median_ms": round(statistics.median(swaps), 2)}
        report["swaps"]["max_ms"] = round(max(swaps), 2)
        cpu = clock.swaps_cpu_ms
        report["swaps"] |= {"cpu_median_ms": round(statistics.median(cpu), 2), "cpu_max_ms": round(max(cpu), 2)}
        setup = {"turns": args.turns, "tokens": args.tokens, "rank": args.rank, "size": args.size, "beside": args.beside}
        report["setup"] = {**setup, "adapter_bytes": weights}
        report["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(report, indent=2))
    finally:
        await asyncio.to_thread(engine.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--churn", action="store_true", help="load and unload again and again while the turns decode")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--beside", action="store_true", help="keep another adapter loaded while one churns")
    asyncio.run(main(parser.parse_args()))
