"""Text turns stream while image turns join (issue 21): the running turns' longest pause and the image turns' TTFT.

Run from a checkout's root with PYTHONPATH=$PWD: `python scripts/image_join_bench.py --model DIR --images 1`.
Prints one JSON line per round. Every round's pictures are new (no held KV, no held encoder output).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
import time
from dataclasses import dataclass, field

from PIL import Image

from gateway.engine.contract import ChatImage, ChatMessage, GenerationRequest, GenerationResult, SamplingParams
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from gateway.media.images import ImageLimits, check_image


@dataclass
class Sink:
    request: GenerationRequest
    times: list[float] = field(default_factory=list)
    done: asyncio.Future[GenerationResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def on_queued(self, position: int) -> None:
        pass

    def on_token(self, text: str) -> None:
        self.times.append(time.perf_counter())

    def on_done(self, result: GenerationResult) -> None:
        self.done.set_result(result)


def picture(seed: int, size: tuple[int, int]) -> ChatImage:
    out = io.BytesIO()
    Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)).save(out, "PNG")
    return check_image(out.getvalue(), ImageLimits(max_bytes=1 << 26, max_pixels=1 << 26))


def submit(engine: LocalEngine, messages: list[ChatMessage], params: SamplingParams) -> Sink:
    sink = Sink(GenerationRequest(messages=messages, params=params))
    engine.submit(sink.request, sink)
    return sink


async def one_round(engine: LocalEngine, seed: int, args: argparse.Namespace, size: tuple[int, int]) -> dict[str, float]:
    streaming = SamplingParams(temperature=0, max_tokens=4000, ignore_eos=True)
    stories = [[ChatMessage("user", f"Tell me a long story number {seed}-{i}.")] for i in range(args.text_turns)]
    running = [submit(engine, story, streaming) for story in stories]
    while min(len(sink.times) for sink in running) < 5:
        await asyncio.sleep(0.005)
    start = time.perf_counter()
    asked = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    pictures = [tuple(picture(seed * 100 + n * 10 + k, size) for k in range(args.pictures)) for n in range(args.images)]
    joiners = [submit(engine, [ChatMessage("user", "What is in these pictures?", shown)], asked) for shown in pictures]
    results = [await asyncio.wait_for(sink.done, 600) for sink in joiners]
    end = max(sink.times[0] for sink in joiners)
    for sink in running:
        while not sink.times or sink.times[-1] < end:  # each running turn's first token after the joiners' last first token
            await asyncio.sleep(0.005)
    pauses = []
    for sink in running:
        window = [t for t in sink.times if t >= start - 1.0]
        pauses += [b - a for a, b in itertools.pairwise(window) if b > start]
    for sink in running:
        sink.request.handle.cancel()
        await asyncio.wait_for(sink.done, 600)
    return {
        "prompt_tokens": float(results[0].prompt_tokens),
        "ttft_ms": max(sink.times[0] - start for sink in joiners) * 1000,
        "longest_pause_ms": max(pauses) * 1000,
        "load_1m": os.getloadavg()[0],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", type=int, default=1, help="image turns joining together")
    parser.add_argument("--pictures", type=int, default=4, help="pictures in each image turn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--text-turns", type=int, default=8)
    parser.add_argument("--size", default="448x448")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    engine = LocalEngine(load_model(args.model), max_batch=16)
    engine.start()
    try:
        for n in range(args.rounds + 1):  # round 0 warms up
            figures = await one_round(engine, args.seed * 1000 + n, args, (size[0], size[1]))
            if n:
                print(json.dumps({"round": n, "images": args.images, **figures}), flush=True)
    finally:
        await asyncio.to_thread(engine.stop)


if __name__ == "__main__":
    asyncio.run(main())
