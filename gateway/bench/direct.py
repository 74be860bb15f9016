"""`gateway bench --direct-url`: the same load through the gateway and straight to a server, alternated fairly."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import asdict
from typing import Any

from gateway.bench.openai import per_token_ms, run_direct
from gateway.bench.profile import cpu_seconds
from gateway.bench.run import BenchConfig, _run, percentiles, prompt_text, run_load


def direct_comparison(args: Any, config: BenchConfig, gateway_pid: int | None) -> dict[str, Any]:
    """The load through the gateway and straight to `--direct-url`, alternated `rounds` times so both see
    the same machine: each side's median round, and the median of the rounds' ratios. Both sides warm up
    just before the rounds, and each goes first in every other round, so neither always runs in the other's
    wake (a burst of the machine's other work, the other side's threads winding down)."""
    prompt = prompt_text(args.prompt_words)
    asyncio.run(run_direct(args.direct_url, 2, 1, prompt, 8))
    _run(run_load(BenchConfig(**{**asdict(config), "sessions": 2, "turns": 1, "max_tokens": 8, "progress": False})), config.url)
    load_before = os.getloadavg()
    rounds, idle = [], []
    for index in range(args.rounds):
        sides: dict[str, dict[str, Any]] = {}
        order = ("gateway", "direct") if index % 2 == 0 else ("direct", "gateway")
        for name in order:
            if name == "gateway":
                through = _run(run_load(BenchConfig(**{**asdict(config), "progress": False})), config.url)
                sides[name] = _side(through.tokens_per_s, through.ttft_ms, through.tpot_ms, through.errors)
                continue
            cpu_before, started = _cpu_seconds(gateway_pid), time.perf_counter()
            results, wall = asyncio.run(run_direct(args.direct_url, args.sessions, args.turns, prompt, args.max_tokens))
            sides[name] = _direct_side(results, wall)
            if gateway_pid is not None:  # what the idle gateway took from the direct side's machine
                idle.append((_cpu_seconds(gateway_pid) - cpu_before) / (time.perf_counter() - started))
        rounds.append((sides["gateway"], sides["direct"], order[0]))
    ratios = [g["tokens_per_s"] / d["tokens_per_s"] for g, d, _ in rounds if d["tokens_per_s"]]
    added = [g["tpot_ms"]["p50"] - d["tpot_ms"]["p50"] for g, d, _ in rounds]
    return {
        f"direct_{args.sessions}_sessions": _median_side([d for _, d, _ in rounds]),
        "vs_direct": {
            "tokens_per_s_ratio": round(statistics.median(ratios), 3) if ratios else None,
            "added_itl_p50_ms": round(statistics.median(added), 3),
            "itl_basis": "per token: each turn's (last token - first token) / (tokens - 1), both sides",
            "rounds": [{"first": first, "gateway": g, "direct": d} for g, d, first in rounds],
            "gateway_idle_cpu_share": round(max(idle), 4) if idle else None,
            "load_average": [round(x, 2) for x in (*load_before, *os.getloadavg())],
        },
    }


def _cpu_seconds(pid: int | None) -> float:
    """User and system CPU time of a process, all its threads (0 when unknown or gone)."""
    return cpu_seconds(f"/proc/{pid}/stat")[1] if pid is not None else 0.0


def _side(tokens_per_s: float, ttft: dict[str, float], tpot: dict[str, float], errors: int) -> dict[str, Any]:
    return {"tokens_per_s": round(tokens_per_s, 2), "ttft_ms": ttft, "tpot_ms": tpot, "errors": errors}


def _direct_side(results: list[Any], wall: float) -> dict[str, Any]:
    done = [r for r in results if r.error is None]
    tokens_per_s = sum(r.completion_tokens for r in done) / wall if wall else 0.0
    ttft = percentiles([(r.token_times[0] - r.sent_at) * 1000 for r in done if r.token_times])
    tpot = [t for r in done if (t := per_token_ms(r.token_times, r.completion_tokens)) is not None]
    return _side(tokens_per_s, ttft, percentiles(tpot), len(results) - len(done))


def _median_side(sides: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput, whole (its latencies belong with its throughput)."""
    return sorted(sides, key=lambda side: float(side["tokens_per_s"]))[len(sides) // 2]
