"""`gateway bench --history`: conversations of N turns straight on the local engine, KV reuse on and off."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

from gateway.bench import prompt_text


@dataclass
class HistoryRun:
    ttft_ms: list[list[float]]  # per session, per turn
    completion_tokens: int
    wall_s: float

    def ttft_by_turn(self) -> list[float]:
        """Each turn's time to first token, the mean over sessions."""
        return [statistics.mean(turn) for turn in zip(*self.ttft_ms)]

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0


def run_history(model_dir: str, turns: int, sessions: int, prompt_words: int, max_tokens: int) -> dict[str, Any]:
    """`sessions` conversations of `turns` turns at once, with KV reuse (the default budget) and without:
    time to first token by turn index, the late/early ratio of each, reuse's speed-up late on, and the
    aggregate tokens/s of each. The load average is noted with it: a busy machine skews every figure."""
    from gateway.config import Settings

    report: dict[str, Any] = {
        "model": model_dir,
        "history_turns": turns,
        "sessions": sessions,
        "prompt_words": prompt_words,
        "max_tokens": max_tokens,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    runs = {
        label: _history_run(model_dir, turns, sessions, prompt_words, max_tokens, kv)
        for label, kv in (("reuse", Settings().kv_cache_bytes), ("no_reuse", 0))
    }
    ttft = {label: run.ttft_by_turn() for label, run in runs.items()}
    for label, run in runs.items():
        report[label] = {
            "ttft_ms_by_turn": [round(v, 2) for v in ttft[label]],
            "late_over_early": round(_late_over_early(ttft[label]), 3),
            "tokens_per_s": round(run.tokens_per_s, 2),
            "wall_s": round(run.wall_s, 2),
        }
    late = slice(20, None) if turns > 20 else slice(turns // 2, None)
    report["speedup_late_turns"] = round(statistics.mean(ttft["no_reuse"][late]) / statistics.mean(ttft["reuse"][late]), 2)
    report["tokens_per_s_ratio"] = round(runs["reuse"].tokens_per_s / runs["no_reuse"].tokens_per_s, 3)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


def _late_over_early(values: list[float]) -> float:
    k = max(1, min(3, len(values) // 4))
    return statistics.mean(values[-k:]) / statistics.mean(values[:k])


def _history_run(model_dir: str, turns: int, sessions: int, prompt_words: int, max_tokens: int, kv: int | None) -> HistoryRun:
    from gateway.engine.loader import load_model
    from gateway.engine.local import LocalEngine

    engine = LocalEngine(load_model(model_dir), max_batch=max(16, sessions), kv_cache_bytes=kv)
    engine.start()
    try:
        return asyncio.run(_conversations(engine, turns, sessions, prompt_words, max_tokens))
    finally:
        engine.stop()


async def _conversations(engine: Any, turns: int, sessions: int, prompt_words: int, max_tokens: int) -> HistoryRun:
    from gateway.engine.types import ChatMessage, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    await _engine_turn(engine, [ChatMessage("user", "warm up")], params)
    started = time.perf_counter()
    ttft = await asyncio.gather(*(_conversation(engine, s, turns, prompt_words, params) for s in range(sessions)))
    wall = time.perf_counter() - started
    return HistoryRun(ttft_ms=list(ttft), completion_tokens=sessions * turns * max_tokens, wall_s=wall)


async def _conversation(engine: Any, session: int, turns: int, prompt_words: int, params: Any) -> list[float]:
    from gateway.engine.types import ChatMessage

    history: list[ChatMessage] = []
    ttft = []
    for turn in range(turns):
        history.append(ChatMessage("user", f"session {session} turn {turn} " + prompt_text(prompt_words)))
        result = await _engine_turn(engine, history, params)
        history.append(ChatMessage("assistant", result.text))
        ttft.append(result.ttft_ms or 0.0)
    return ttft


async def _engine_turn(engine: Any, messages: list[Any], params: Any) -> Any:
    from gateway.engine.types import GenerationRequest

    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    class Sink:
        def on_queued(self, position: int) -> None: ...
        def on_token(self, text: str) -> None: ...
        def on_done(self, result: Any) -> None:
            done.set_result(result)

    engine.submit(GenerationRequest(messages=messages, params=params), Sink())
    return await done
