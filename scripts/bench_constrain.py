"""Step-time overhead of constrained decoding: 16 rows decoding together, 0 or 8 of them under a JSON
schema, on the demo model. Prints the mean step time of each and the time spent masking.

    .venv/bin/python scripts/bench_constrain.py [--size tiny|small] [--tokens 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from gateway.core.structured import json_grammar
from gateway.engine.contract import ChatMessage, GenerationRequest, GenerationResult, SamplingParams
from gateway.engine.demo import cached_demo_model
from gateway.engine.local import generation
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model

# Never complete within the budget, so constrained rows run as long as free ones.
SCHEMA = {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}, "minItems": 1000}
masking_s = 0.0
masking_calls = 0


def timed_mask(original):  # type: ignore[no-untyped-def]
    def wrapper(logits, grammars):  # type: ignore[no-untyped-def]
        global masking_s, masking_calls
        start = time.perf_counter()
        original(logits, grammars)
        if any(g is not None for g in grammars):
            masking_s += time.perf_counter() - start
            masking_calls += 1

    return wrapper


class Sink:
    def __init__(self) -> None:
        self.done: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()

    def on_queued(self, position: int) -> None: ...

    def on_token(self, text: str) -> None: ...

    def on_done(self, result: GenerationResult) -> None:
        self.done.set_result(result)


async def run(engine: LocalEngine, constrained: int, tokens: int) -> float:
    """Seconds per decode step with 16 rows, `constrained` of them under the schema."""
    grammar = json_grammar(SCHEMA)
    sinks = []
    for i in range(16):
        params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True, grammar=grammar if i < constrained else None)
        sinks.append(Sink())
        engine.submit(GenerationRequest([ChatMessage("user", f"row {i}")], params), sinks[-1])
    results = [await s.done for s in sinks]
    assert all(r.completion_tokens == tokens for r in results), [r.finish_reason for r in results]
    first = min(r.ttft_ms or 0 for r in results)
    return (max(r.total_ms for r in results) - first) / 1000 / (tokens - 1)


async def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--size", default="tiny", choices=["tiny", "small"])
    args.add_argument("--tokens", type=int, default=200)
    args.add_argument("--repeats", type=int, default=3)
    opts = args.parse_args()
    generation.mask_logits = timed_mask(generation.mask_logits)  # type: ignore[no-untyped-call]
    engine = LocalEngine(load_model(cached_demo_model(opts.size)), max_batch=16)
    engine.start()
    await run(engine, 8, 20)  # warm up both paths
    free, mixed = [], []
    for _ in range(opts.repeats):
        free.append(await run(engine, 0, opts.tokens))
        global masking_s, masking_calls
        masking_s, masking_calls = 0.0, 0
        mixed.append(await run(engine, 8, opts.tokens))
    engine.stop()
    f, m = min(free), min(mixed)
    vocab = engine.grammars.vocab_size if engine.grammars else 0
    print(f"demo-{opts.size} (vocab {vocab}), 16 rows: free {f * 1000:.2f} ms/step, 8 of 16 constrained {m * 1000:.2f} ms/step")
    print(f"overhead {100 * (m - f) / f:+.1f}%; masking {1000 * masking_s / max(1, masking_calls):.3f} ms/step (last run)")


if __name__ == "__main__":
    asyncio.run(main())
