"""What prefilling a live turn's frames ahead of its question would save: the question's TTFT on the engine alone.

    PYTHONPATH=$PWD .venv/bin/python scripts/warm_frames_probe.py [--cameras 8]

For each camera, a session's history is held, then a live question over 4 new frames is asked either cold or
after a warm-up turn over the same history and frames without the question (what a gateway could prefill while the
engine is idle, as frames arrive): the prefix cache reuses the warm-up's KV up to the question's text, so the
question prefills only that. The demo model (small), the bench's camera frames and markers."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.bench.live import camera_frame
from gateway.engine.contract import ChatImage, ChatMessage, SamplingParams
from gateway.engine.demo import cached_demo_model
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from tests.unit.engine.test_batching import submit

FRAMES = 4


def frame(index: int, camera: int) -> ChatImage:
    data = camera_frame(index, (640, 480), camera)
    return ChatImage(data, "image/jpeg", 640, 480, hashlib.sha256(data).hexdigest())


async def asked(engine: LocalEngine, messages: list[ChatMessage], max_tokens: int = 1) -> tuple[float, int, int]:
    """A turn's TTFT (from submission), prompt tokens and cached tokens."""
    sink, _ = submit(engine, messages, SamplingParams(temperature=0, max_tokens=max_tokens))
    result = await sink.done
    assert result.ttft_ms is not None
    return result.ttft_ms, result.prompt_tokens, result.cached_tokens


async def probe(cameras: int) -> dict[str, dict[str, float]]:
    engine = LocalEngine(load_model(cached_demo_model("small")), max_batch=8)
    engine.start()
    out: dict[str, list[tuple[float, int, int]]] = {"cold": [], "warm": []}
    try:
        for camera in range(cameras):
            for mode in out:
                scene = 2 * camera + (mode == "warm")  # its own frames: nothing of them is held
                history = [ChatMessage("user", f"Say something {scene}."), ChatMessage("assistant", "Said.")]
                await asked(engine, history[:1], 8)
                frames = tuple(frame(4 * k, scene) for k in range(FRAMES))  # the box moves every fourth frame
                markers = " ".join(f"[camera, {12.5 + 2 * k:.3f} s]" for k in range(FRAMES))
                if mode == "warm":
                    await asked(engine, [*history, ChatMessage("user", markers, frames)])
                out[mode].append(await asked(engine, [*history, ChatMessage("user", f"{markers}\nWhat moved?", frames)]))
    finally:
        await asyncio.to_thread(engine.stop)
    return {
        mode: {
            "ttft_p50_ms": round(statistics.median(t for t, _, _ in rows), 1),
            "prompt_tokens": rows[0][1],
            "prefilled_tokens_mean": round(statistics.mean(p - c for _, p, c in rows), 1),
        }
        for mode, rows in out.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=8)
    print(asyncio.run(probe(parser.parse_args().cameras)))


if __name__ == "__main__":
    main()
