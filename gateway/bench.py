"""`gateway bench`: N WebSocket sessions against a gateway, with raw `generate` baselines from the same run."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from websockets.exceptions import WebSocketException

from gateway.bench_openai import BENCH_SAMPLING, per_token_ms
from gateway.client import GatewayClient, TurnResult
from gateway.startup import model_dir as resolve_model_dir

T = TypeVar("T")
log = logging.getLogger("gateway.bench")
QUIET_LOADING = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # model-loading bars would cut through the bench's own


class BenchError(Exception):
    """The gateway could not be started or reached; the message says why, in one line."""


PROMPT_WORDS = "the red house on the left shows a small cat and a large dog under one blue sky".split()


@dataclass
class LoadReport:
    sessions: int
    turns: int
    completion_tokens: int
    wall_s: float
    errors: int
    ttft_ms: dict[str, float]
    itl_ms: dict[str, float]  # between two token frames (a frame can carry several tokens)
    tpot_ms: dict[str, float]  # per token, each turn's decode time over its tokens (see per_token_ms)
    session_tokens_per_s: dict[str, float]
    token_frames: int

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0

    @property
    def frames_per_s(self) -> float:
        return self.token_frames / self.wall_s if self.wall_s else 0.0


@dataclass
class BenchConfig:
    url: str
    sessions: int = 16
    turns: int = 2
    max_tokens: int = 64
    prompt_words: int = 48
    images: int = 0
    progress: bool = True
    turn_timeout_s: float = 300.0  # a turn with no `done` by then counts as an error and ends its session
    extra: dict[str, Any] = field(default_factory=dict)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99)}


def prompt_text(words: int) -> str:
    return " ".join(PROMPT_WORDS[i % len(PROMPT_WORDS)] for i in range(words))


def bench_image() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (112, 112), (180, 40, 40)).save(buffer, "PNG")
    return buffer.getvalue()


class StartLine:
    """Connected sessions wait here, so that every first turn starts together, as the direct load's do:
    staggered starts would make the upstream run more, smaller batches, and the gateway would be blamed
    for the WebSocket handshakes. The wall clock starts when the line opens."""

    def __init__(self, sessions: int) -> None:
        self.waiting = sessions
        self.opened = asyncio.Event()
        self.opened_at = time.perf_counter()

    async def reach(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.opened_at = time.perf_counter()
            self.opened.set()
        await self.opened.wait()


async def _session(config: BenchConfig, index: int, results: list[TurnResult], tick: Any, line: StartLine) -> None:
    images = [bench_image()] * config.images
    async with GatewayClient(config.url) as client:
        await line.reach()
        for turn in range(config.turns):
            result = TurnResult(id=f"s{index}-t{turn}", sent_at=time.perf_counter())
            await client.start_turn(
                result.id, prompt_text(config.prompt_words), images, max_tokens=config.max_tokens, **BENCH_SAMPLING
            )
            results.append(result)
            try:
                await asyncio.wait_for(client.collect(result.id, result), config.turn_timeout_s)
            except asyncio.TimeoutError:  # counted as an error; the connection's state is unknown, so it ends here
                log.warning("bench turn %s: no done in %.0f s (%s)", result.id, config.turn_timeout_s, _progress_of(result))
                return
            tick()
            # Every turn sees the same prompt length. Not awaited: the server takes a connection's frames in
            # order, so the next turn finds the history empty without the bench waiting a round trip for it.
            await client.send({"type": "reset"})


def _progress_of(result: TurnResult) -> str:
    accepted = "accepted" if result.accepted is not None else "not accepted"
    return f"{accepted}, {len(result.deltas)} token frames, errors {[e.get('code') for e in result.errors]}"


async def run_load(config: BenchConfig) -> LoadReport:
    """Run `sessions` concurrent sessions of `turns` turns each; measure latencies and throughput."""
    results: list[TurnResult] = []
    bar = _progress(
        config.sessions * config.turns, config.progress, f"{config.sessions} session{'s' if config.sessions > 1 else ''}"
    )
    line = StartLine(config.sessions)
    try:
        await asyncio.gather(*(_session(config, i, results, bar.update, line) for i in range(config.sessions)))
    finally:
        bar.close()  # before any error is printed, so the two do not share a line
    wall = time.perf_counter() - line.opened_at
    done = [r for r in results if r.done is not None]
    ttft = [(r.token_times[0] - r.sent_at) * 1000 for r in done if r.token_times]
    itl = [(b - a) * 1000 for r in done for a, b in zip(r.token_times, r.token_times[1:])]
    tpot = [t for r in done if r.done and (t := per_token_ms(r.token_times, r.done["usage"]["completion_tokens"])) is not None]
    per_session = [
        r.done["usage"]["completion_tokens"] / (r.token_times[-1] - r.sent_at)
        for r in done
        if r.done and r.token_times and r.token_times[-1] > r.sent_at
    ]
    return LoadReport(
        sessions=config.sessions,
        turns=len(results),
        completion_tokens=sum(r.done["usage"]["completion_tokens"] for r in done if r.done),
        wall_s=round(wall, 4),
        errors=sum(1 for r in results if r.errors or r.done is None),  # turns, each counted once
        ttft_ms=percentiles(ttft),
        itl_ms=percentiles(itl),
        tpot_ms=percentiles(tpot),
        session_tokens_per_s=percentiles(per_session),
        token_frames=sum(len(r.token_times) for r in done),
    )


async def late_joiner(config: BenchConfig) -> dict[str, float]:
    """TTFT of one turn sent while `sessions - 1` others are mid-stream, with the batch's step time."""
    background = BenchConfig(**{**asdict(config), "sessions": 1, "turns": 1, "max_tokens": config.max_tokens * 4})
    clients = [GatewayClient(config.url) for _ in range(config.sessions - 1)]
    async with contextlib.AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)
        for i, client in enumerate(clients):
            await client.start_turn(
                f"bg{i}", prompt_text(config.prompt_words), temperature=0, max_tokens=background.max_tokens, ignore_eos=True
            )
        for client in clients:  # wait until every background turn is streaming
            while (await client.recv())["type"] != "token":
                pass
        async with GatewayClient(config.url) as joiner:
            result = await joiner.turn("late", prompt_text(config.prompt_words), temperature=0, max_tokens=8, ignore_eos=True)
        for i, client in enumerate(clients):
            await client.send({"type": "cancel", "id": f"bg{i}"})
    ttft = (result.token_times[0] - result.sent_at) * 1000 if result.token_times else float("nan")
    return {"ttft_ms": round(ttft, 3)}


def baselines(model_dir: str, batch: int, max_tokens: int, prompt_words: int, images: int) -> dict[str, float]:
    """Raw transformers `generate` on the same model and prompt: one stream, then one static batch."""
    import torch
    from transformers.utils import logging as transformers_logging

    from gateway.engine.local.engine import engine_threads
    from gateway.engine.local.loader import load_model
    from gateway.engine.types import ChatMessage
    from gateway.images import ImageLimits, check_image

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    torch.set_num_threads(engine_threads())  # as the engine's generation thread runs
    loaded = load_model(model_dir)
    picture = check_image(bench_image(), ImageLimits(max_bytes=1 << 24, max_pixels=1 << 24))
    chat_images = (picture,) * images
    inputs = loaded.prompt.build([ChatMessage("user", prompt_text(prompt_words), chat_images)])

    def run(n: int) -> float:
        ids = inputs.input_ids.repeat(n, 1)
        extras = {k: v for k, v in inputs.extras.items()}
        if "pixel_values" in extras:
            extras["pixel_values"] = extras["pixel_values"].repeat(n, 1)
            extras["image_grid_thw"] = extras["image_grid_thw"].repeat(n, 1)
            extras["mm_token_type_ids"] = extras["mm_token_type_ids"].repeat(n, 1)
        with torch.inference_mode():
            started = time.perf_counter()
            loaded.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                **extras,
            )
            return n * max_tokens / (time.perf_counter() - started)

    run(1)  # warm-up
    single = statistics.median(run(1) for _ in range(3))
    static = statistics.median(run(batch) for _ in range(2))
    return {"generate_single_tokens_per_s": round(single, 2), f"generate_static_batch_{batch}_tokens_per_s": round(static, 2)}


@contextlib.contextmanager
def local_server(model_dir: str | None, port: int, engine: str, cpus: set[int] | None = None) -> Iterator[tuple[str, int]]:
    """Start `gateway serve` in its own process (so the load generator does not share its GIL); yield its
    URL and process id. With `cpus`, the gateway runs on those CPUs and this process on the others, as
    `taskset` would place them: an engine beside a pinned upstream gets the same cores to itself."""
    command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--log-level", "warning"]
    if model_dir:
        command += ["--model", model_dir]
    if engine == "scripted":
        command += ["--engine", "scripted"]
    env = {**os.environ, **QUIET_LOADING, "GATEWAY_ENGINE_QUEUE_SIZE": "1024"}
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    process = subprocess.Popen(command, env=env, preexec_fn=pin)
    mine = os.sched_getaffinity(0)
    if cpus and mine - cpus:
        os.sched_setaffinity(0, mine - cpus)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/healthz", process)
        yield f"ws://127.0.0.1:{port}/ws", process.pid
    finally:
        os.sched_setaffinity(0, mine)
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError("the gateway started for the benchmark exited before it was ready (its error is above)")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchError(f"the gateway started for the benchmark was not ready within {timeout_s:.0f} s")


def _progress(total: int, enabled: bool, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=label, disable=not enabled, file=sys.stderr, leave=False)


def run_bench(args: Any) -> dict[str, Any]:
    """The whole benchmark: 1 session, N sessions, the late joiner, then the baselines; with ratios."""
    from gateway.engine.demo import cached_demo_model

    model_dir = str(resolve_model_dir(args.model)) if args.model else None
    if model_dir is None and not args.url and args.engine == "real":
        model_dir = str(cached_demo_model(args.size))
    history = getattr(args, "history", 0)
    args.sessions = args.sessions or (1 if history else 16)
    if history and model_dir:
        from gateway.bench_history import run_history, run_window

        window = getattr(args, "context_tokens", None)
        if window:
            return run_window(model_dir, history, args.sessions, args.prompt_words, args.max_tokens, window)
        return run_history(model_dir, history, args.sessions, args.prompt_words, args.max_tokens)
    if getattr(args, "context_tokens", None):
        raise SystemExit("gateway bench: --context-tokens goes with --history N (conversations trimmed to that window)")
    report: dict[str, Any] = {
        "model": model_dir or args.url,
        "engine": args.engine,
        "sessions": args.sessions,
        "turns_per_session": args.turns,
        "max_tokens": args.max_tokens,
        "prompt_words": args.prompt_words,
        "images": args.images,
    }
    with contextlib.ExitStack() as stack:
        cpus = getattr(args, "gateway_cpus", None)
        url, gateway_pid = (
            (args.url, None) if args.url else stack.enter_context(local_server(model_dir, args.port, args.engine, cpus))
        )
        config = BenchConfig(
            url=url,
            sessions=args.sessions,
            turns=args.turns,
            max_tokens=args.max_tokens,
            prompt_words=args.prompt_words,
            images=args.images,
            progress=not args.json,
        )
        _run(run_load(BenchConfig(**{**asdict(config), "sessions": 1, "turns": 1, "max_tokens": 8})), url)  # warm-up
        single = _run(run_load(BenchConfig(**{**asdict(config), "sessions": 1})), url)
        many = _run(run_load(config), url)
        report["gateway_1_session"] = {
            **asdict(single),
            "tokens_per_s": round(single.tokens_per_s, 2),
            "frames_per_s": round(single.frames_per_s, 1),
        }
        report[f"gateway_{args.sessions}_sessions"] = {
            **asdict(many),
            "tokens_per_s": round(many.tokens_per_s, 2),
            "frames_per_s": round(many.frames_per_s, 1),
        }
        if args.sessions > 1 and args.engine == "real":
            joiner = _run(late_joiner(config), url)
            # the target: its own prefill (a lone turn's TTFT) plus two decode steps of the full batch
            budget = single.ttft_ms["p50"] + 2 * many.itl_ms["p50"]
            report["late_joiner"] = {**joiner, "budget_ms": round(budget, 3), "within_budget": joiner["ttft_ms"] <= budget}
        if getattr(args, "direct_url", None):
            from gateway.bench_direct import direct_comparison

            report.update(direct_comparison(args, config, gateway_pid))
    if args.baseline and model_dir and args.engine == "real":
        base = baselines(model_dir, args.sessions, args.max_tokens, args.prompt_words, args.images)
        report["baselines"] = base
        report["ratios"] = {
            "1_session_vs_generate_single": round(single.tokens_per_s / base["generate_single_tokens_per_s"], 3),
            f"{args.sessions}_sessions_vs_static_batch": round(
                many.tokens_per_s / base[f"generate_static_batch_{args.sessions}_tokens_per_s"], 3
            ),
            f"{args.sessions}_sessions_vs_generate_single": round(many.tokens_per_s / base["generate_single_tokens_per_s"], 3),
        }
    return report


def _run(work: Coroutine[Any, Any, T], url: str) -> T:
    """Run one phase; a gateway that cannot be reached (or refuses) is a BenchError, not a traceback."""
    try:
        return asyncio.run(work)
    except (OSError, WebSocketException) as exc:
        raise BenchError(f"cannot talk to the gateway at {url}: {str(exc) or type(exc).__name__}") from None
