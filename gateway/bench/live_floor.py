"""The floor under `gateway bench --live`'s target: a live turn's own cost beyond a text turn's, on an idle engine."""

from __future__ import annotations

import statistics
from typing import Any

from gateway.client import GatewayClient, TurnResult

NEW_FRAMES = 4  # distinct frames before each live question: about what a bench session's live turn reads new
FLOOR_CAMERA = 254  # a camera colour no bench session uses: nothing of its frames is held


async def idle_extra(url: str, size: tuple[int, int], rounds: int, frame: Any) -> dict[str, Any]:
    """One session alone on the engine after the run: NEW_FRAMES new frames, a live question, a text question,
    `rounds` times after a first pair left out (its prompt holds no history). The difference of the two medians is
    what a live turn costs beyond a text one when it waits for nothing: its new frames' prefill and encoding.
    Added to the run's text TTFT it is the floor under a live turn's. Passes run slower under the run's load, so
    the floor there is higher and the gap to this one is an upper bound. `frame(index, size, camera)` draws
    the camera's frames (gateway/bench/live.py `camera_frame`)."""
    live: list[float] = []
    text: list[float] = []
    async with GatewayClient(url) as client:
        for n in range(rounds + 1):
            # The scene's box moves every fourth frame: these are NEW_FRAMES distinct frames, none seen before.
            frames = [frame(4 * (NEW_FRAMES * n + i), size, FLOOR_CAMERA) for i in range(NEW_FRAMES)]
            await client.stream_frames("camera", frames)
            asked = await client.turn(f"floor-live{n}", "What moved?", live=True, max_tokens=1, temperature=0)
            said = await client.turn(f"floor-text{n}", "Say something.", max_tokens=1, temperature=0)
            if n:
                live.append(_ttft_ms(asked))
                text.append(_ttft_ms(said))
    live_ms, text_ms = statistics.median(live), statistics.median(text)
    return {
        "rounds": rounds,
        "new_frames": NEW_FRAMES,
        "live_ms": round(live_ms, 1),
        "text_ms": round(text_ms, 1),
        "extra_ms": round(live_ms - text_ms, 1),
    }


def floor(idle: dict[str, Any], text_p50: float, live_p50: float) -> dict[str, Any]:
    """The run's floor under a live turn's TTFT p50 (its text turns' p50 plus a live turn's own extra cost, from
    `idle_extra`), and how far the live turns' p50 is above it."""
    at = round(text_p50 + idle["extra_ms"], 1)
    return {"idle": idle, "p50_ms": at, "live_p50_above_ms": round(live_p50 - at, 1)}


def _ttft_ms(result: TurnResult) -> float:
    assert result.token_times and result.done is not None, f"turn {result.id} got no token: {result.errors}"
    return (result.token_times[0] - result.sent_at) * 1000
