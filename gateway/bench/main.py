"""The whole of `gateway bench`: a local server if none is given, the load phases, then the baselines; with ratios."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from gateway.bench import profile
from gateway.bench.run import QUIET_LOADING, BenchConfig, BenchError, _run, bench_image, late_joiner, prompt_text, run_load
from gateway.startup import model_dir as resolve_model_dir


def baselines(model_dir: str, batch: int, max_tokens: int, prompt_words: int, images: int) -> dict[str, float]:
    """Raw transformers `generate` on the same model and prompt: one stream, then one static batch."""
    import torch
    from transformers.utils import logging as transformers_logging

    from gateway.engine.contract import ChatMessage
    from gateway.engine.local.engine import engine_threads
    from gateway.engine.local.loader import load_model
    from gateway.media.images import ImageLimits, check_image

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


def _live(args: Any, model_dir: str | None) -> dict[str, Any]:
    """Sessions streaming a camera while asking about it (gateway/bench/live.py), on a gateway started here or at --url."""
    from gateway.bench.live import LiveConfig, run_live

    with contextlib.ExitStack() as stack:
        url, pid = (args.url, None) if args.url else stack.enter_context(local_server(model_dir, args.port, args.engine))
        config = LiveConfig(url=url, sessions=args.sessions or 8, seconds=args.seconds, max_tokens=min(args.max_tokens, 16))
        return {"model": model_dir or args.url, **_run(run_live(config, pid), url)}


def edit_mix(model_dir: str, turns: int, prompt_words: int, max_tokens: int) -> dict[str, Any]:
    """The edit mix at the conversation's end (see gateway/bench/edits.py), for one long enough to edit."""
    from gateway.bench.edits import EDIT_BACK, run_edit_mix

    return {"edit_mix": run_edit_mix(model_dir, turns, prompt_words, max_tokens)} if turns > EDIT_BACK else {}


def run_bench(args: Any) -> dict[str, Any]:
    """The whole benchmark: 1 session, N sessions, the late joiner, then the baselines; with ratios."""
    from gateway.engine.demo import cached_demo_model

    model_dir = str(resolve_model_dir(args.model)) if args.model else None
    if model_dir is None and not args.url and args.engine == "real":
        model_dir = str(cached_demo_model(args.size))
    history = getattr(args, "history", 0)
    if getattr(args, "live", False):
        return _live(args, model_dir)
    args.sessions = args.sessions or (1 if history else 16)
    if history and model_dir:
        from gateway.bench.history import run_history, run_window

        window = getattr(args, "context_tokens", None)
        if window:
            return run_window(model_dir, history, args.sessions, args.prompt_words, args.max_tokens, window)
        conversations = run_history(model_dir, history, args.sessions, args.prompt_words, args.max_tokens)
        return conversations | edit_mix(model_dir, history, args.prompt_words, args.max_tokens)
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
        before = profile.read(url, gateway_pid)
        many = single if args.sessions == 1 else _run(run_load(config), url)  # with one session, it is the run above
        report["engine_profile"] = profile.shares(before, profile.read(url, gateway_pid))
        report["gateway_1_session"] = {
            **asdict(single),
            "tokens_per_s": round(single.tokens_per_s, 2),
            "frames_per_s": round(single.frames_per_s, 1),
        }
        if args.sessions > 1:
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
            from gateway.bench.direct import direct_comparison

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
