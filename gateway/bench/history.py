"""`gateway bench --history`: conversations of N turns straight on the local engine, KV reuse on and off."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

from gateway.bench.run import prompt_text


@dataclass
class HistoryRun:
    ttft_ms: list[list[float]]  # per session, per turn
    completion_tokens: int
    wall_s: float
    trimmed: list[list[bool]] | None = None  # per session, per turn: it dropped old exchanges (with a window)

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

    report = _header(model_dir, turns, sessions, prompt_words, max_tokens)
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
    return _with_load(report)


def run_window(model_dir: str, turns: int, sessions: int, prompt_words: int, max_tokens: int, window: int) -> dict[str, Any]:
    """Conversations trimmed to a `window`-token context, KV reuse on, with `trim_headroom` (the default)
    and without: how often turns drop exchanges, and time to first token at the window's edge (the turns
    from the first trim on), where without headroom nearly every turn drops one and prefills in full."""
    from gateway.config import Settings

    report = _header(model_dir, turns, sessions, prompt_words, max_tokens) | {"window_tokens": window}
    share = Settings().trim_headroom
    for label, headroom in (("headroom", share), ("no_headroom", 0.0)):
        run = _history_run(model_dir, turns, sessions, prompt_words, max_tokens, Settings().kv_cache_bytes, (window, headroom))
        assert run.trimmed is not None
        edge = [ms for times, trims in zip(run.ttft_ms, run.trimmed) for ms in times[_first_trim(trims) :]]
        report[label] = {
            "trim_headroom": headroom,
            "ttft_ms_by_turn": [round(v, 2) for v in run.ttft_by_turn()],
            "trims": sum(map(sum, run.trimmed)),
            "edge_turns": len(edge),
            "edge_ttft_ms": round(statistics.mean(edge), 2) if edge else None,
            "tokens_per_s": round(run.tokens_per_s, 2),
        }
    with_, without = report["headroom"]["edge_ttft_ms"], report["no_headroom"]["edge_ttft_ms"]
    report["edge_speedup"] = round(without / with_, 2) if with_ and without else None
    return _with_load(report)


def _first_trim(trims: list[bool]) -> int:
    return trims.index(True) if True in trims else len(trims)


def _header(model_dir: str, turns: int, sessions: int, prompt_words: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model_dir,
        "history_turns": turns,
        "sessions": sessions,
        "prompt_words": prompt_words,
        "max_tokens": max_tokens,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }


def _with_load(report: dict[str, Any]) -> dict[str, Any]:
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


def _late_over_early(values: list[float]) -> float:
    k = max(1, min(3, len(values) // 4))
    return statistics.mean(values[-k:]) / statistics.mean(values[:k])


Window = tuple[int, float]  # a context window in tokens, and the share of it trimming frees as headroom


def _history_run(
    model_dir: str, turns: int, sessions: int, prompt_words: int, max_tokens: int, kv: int | None, window: Window | None = None
) -> HistoryRun:
    from gateway.engine.local.engine import LocalEngine
    from gateway.engine.local.loader import load_model
    from gateway.errors import GatewayError

    engine = LocalEngine(load_model(model_dir), max_batch=max(16, sessions), kv_cache_bytes=kv)
    engine.start()
    try:
        return asyncio.run(_conversations(engine, turns, sessions, prompt_words, max_tokens, window))
    except GatewayError as exc:  # a window too small for one turn
        raise SystemExit(f"gateway bench: {exc.message}; give --context-tokens more room") from None
    finally:
        engine.stop()


async def _conversations(
    engine: Any, turns: int, sessions: int, prompt_words: int, max_tokens: int, window: Window | None
) -> HistoryRun:
    from gateway.engine.contract import ChatMessage, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    await _engine_turn(engine, [ChatMessage("user", "warm up")], params)
    started = time.perf_counter()
    runs = await asyncio.gather(*(_conversation(engine, s, turns, prompt_words, params, window) for s in range(sessions)))
    wall = time.perf_counter() - started
    trimmed = [trims for _, trims in runs] if window else None
    return HistoryRun([ttft for ttft, _ in runs], sessions * turns * max_tokens, wall, trimmed)


async def _conversation(
    engine: Any, session: int, turns: int, prompt_words: int, params: Any, window: Window | None
) -> tuple[list[float], list[bool]]:
    """One conversation's TTFT by turn, and which turns dropped old exchanges (trimmed as the gateway's
    sessions are, when a window is given)."""
    from gateway.core.session import Session, UserTurn

    history = Session(max_history_turns=turns)
    ttft, trims = [], []
    tokens, share = window or (1 << 62, 0.0)
    count = engine.count_prompt_tokens if window else _uncounted  # no window: nothing to count for
    for turn in range(turns):
        user = UserTurn(f"t{turn}", f"session {session} turn {turn} " + prompt_text(prompt_words))
        plan = await history.plan(user, params.max_tokens, tokens, count, None, share)
        history.drop_oldest(plan.dropped_turns)
        result = await _engine_turn(engine, plan.messages, params)
        history.record(user, result.text, False, history.epoch)
        ttft.append(result.ttft_ms or 0.0)
        trims.append(plan.dropped_turns > 0)
    return ttft, trims


async def _uncounted(messages: Any) -> int:
    return 0


async def _engine_turn(engine: Any, messages: list[Any], params: Any) -> Any:
    from gateway.engine.contract import GenerationRequest

    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    class Sink:
        def on_queued(self, position: int) -> None: ...
        def on_token(self, text: str) -> None: ...
        def on_done(self, result: Any) -> None:
            done.set_result(result)

    engine.submit(GenerationRequest(messages=messages, params=params), Sink())
    return await done
