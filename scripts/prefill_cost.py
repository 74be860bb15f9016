"""The floor under a live turn's time to first token: its prompt's extra tokens times the model's prefill cost per token.

    PYTHONPATH=$PWD .venv/bin/python scripts/prefill_cost.py [--model DIR] [--rounds 5]

Measures, on this machine and the engine's thread count, one forward pass of K new tokens over a held prefix (the
way a turn on held KV is prefilled), for several K, alternated round by round; fits ms = fixed + per_token * K by
least squares; and counts the tokens one bench camera frame (640x480 JPEG) takes in a prompt (T). A live turn
reading N new frames prefills about N*T more tokens than a text turn, so its floor is a text turn's TTFT plus
N*T*per_token (the vision tower's time apart). Prints JSON, with the load average (CPU timings on a shared machine
mean little without it)."""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.bench.live import camera_frame
from gateway.engine.contract import ChatImage, ChatMessage
from gateway.engine.demo import cached_demo_model
from gateway.engine.local.engine import engine_threads
from gateway.engine.local.loader import load_model

NEW_TOKENS = (8, 32, 64, 128, 192)
PREFIX_TOKENS = 256  # about a bench session's prompt after a few turns


def frame_tokens(loaded: Any, frames: int) -> int:
    """Prompt tokens that `frames` bench camera frames add to a one-line user message."""
    images = []
    for i in range(frames):
        data = camera_frame(4 * i, (640, 480))
        images.append(ChatImage(data=data, mime="image/jpeg", width=640, height=480, sha256=hashlib.sha256(data).hexdigest()))
    with_frames = loaded.prompt.build([ChatMessage("user", "What moved?", tuple(images))])
    without = loaded.prompt.build([ChatMessage("user", "What moved?")])
    return int(with_frames.input_ids.shape[1] - without.input_ids.shape[1])


def prefill_ms(model: Any, held: Any, prefix: int, new: torch.Tensor) -> float:
    """One forward pass of `new` over a copy of the `held` cache of `prefix` tokens, in ms."""
    cache = copy.deepcopy(held)
    positions = torch.arange(prefix, prefix + new.shape[1]).unsqueeze(0)
    start = time.perf_counter()
    with torch.inference_mode():
        model(input_ids=new, past_key_values=cache, use_cache=True, position_ids=positions)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a model directory (default: the demo model)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(engine_threads())
    loaded = load_model(args.model or cached_demo_model("small"), model_id="gateway-demo")
    model, vocab = loaded.model, loaded.model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, min(vocab, 5000), (1, PREFIX_TOKENS + max(NEW_TOKENS)), generator=generator)
    load_before = os.getloadavg()
    with torch.inference_mode():
        held = model(input_ids=ids[:, :PREFIX_TOKENS], use_cache=True).past_key_values
    times: dict[int, list[float]] = {k: [] for k in NEW_TOKENS}
    for _ in range(args.rounds):
        for k in NEW_TOKENS:
            times[k].append(prefill_ms(model, held, PREFIX_TOKENS, ids[:, PREFIX_TOKENS : PREFIX_TOKENS + k]))
    medians = {k: statistics.median(v) for k, v in times.items()}
    per_token, fixed = statistics.linear_regression(list(medians), list(medians.values()))
    report = {
        "threads": torch.get_num_threads(),
        "prefix_tokens": PREFIX_TOKENS,
        "prefill_ms_median_by_new_tokens": {k: round(v, 1) for k, v in medians.items()},
        "fit_fixed_ms": round(fixed, 1),
        "fit_per_token_ms": round(per_token, 3),
        "tokens_per_camera_frame": frame_tokens(loaded, 1),
        "tokens_for_3_camera_frames": frame_tokens(loaded, 3),
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
