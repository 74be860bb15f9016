"""Where a live turn's time goes: `gateway bench --live` against a gateway in a process of its own (as the bench
starts it: the client shares no GIL with it), timing on the generation thread the model's forward passes, the
vision tower's share of them, and prompt prefills with and without images; and each turn's time to first token
stage by stage, live and text turns alike (scripts/live_stages.py).

    PYTHONPATH=$PWD .venv/bin/python scripts/live_profile.py [--sessions 8] [--seconds 30] [--model DIR]

The timings are hooks on the model (forward pre/post hooks, so they add no work to it) and wrappers around
the batch's prefill calls and the turn path's stages; the bench's own report (TTFT, prompt/cached/prefilled
tokens) comes with them, and the load average, since CPU timings on a shared machine mean little without it."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.bench.live import LiveConfig, run_live
from gateway.config import Settings
from gateway.engine.demo import cached_demo_model
from gateway.engine.local import batch as batch_module
from scripts import live_engine, live_stages
from tests.conftest import start_server

Seconds = collections.defaultdict[str, float]


def time_module(module: Any, name: str, spent: Seconds, calls: collections.Counter[str]) -> None:
    """Add the wall time of each forward pass of `module` (run on the generation thread) to spent[name]."""
    started: list[float] = []
    module.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))

    def done(*_: Any) -> None:
        spent[name] += time.perf_counter() - started.pop()
        calls[name] += 1

    module.register_forward_hook(done)


def time_prefills(spent: Seconds, calls: collections.Counter[str]) -> None:
    """Wrap the batch's prefill calls: named by whether the prompt holds images and whether it starts on held KV."""

    def wrap(method: str, kind: Callable[[tuple[Any, ...]], str]) -> None:
        original = getattr(batch_module.Batch, method)

        def timed(self: Any, *args: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(self, *args)
            finally:
                spent[kind(args)] += time.perf_counter() - start
                calls[kind(args)] += 1

        setattr(batch_module.Batch, method, timed)

    wrap("prefill", lambda args: "prefill (images)" if args[1].images else "prefill (text)")
    wrap("prefill_on", lambda args: "prefill on held KV (images)" if args[1].images else "prefill on held KV (text)")
    wrap("feed_rows", lambda args: "prefill rows (text, batched)")


def time_loop_stages(engine: Any, spent: Seconds, calls: collections.Counter[str]) -> None:
    """Wrap the turn path's awaited stages on the event loop (loading a turn's images and frames, planning its
    prompt), named by whether the turn is live."""
    from gateway.core import session as session_module, turns

    def wrap(owner: Any, name: str, label: str, live: Callable[[tuple[Any, ...]], bool]) -> None:
        original = getattr(owner, name)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                kind = f"{label} ({'live' if live(args) else 'text'})"
                spent[kind] += time.perf_counter() - start
                calls[kind] += 1

        setattr(owner, name, timed)

    wrap(turns, "session_turns", "loop: load images and frames", lambda args: args[2].live is not None)
    wrap(session_module.Session, "plan", "loop: plan the prompt", lambda args: bool(args[1].images))
    wrap(turns.TurnService, "_start", "loop: the whole turn up to submission", lambda args: args[2].live is not None)
    wrap(engine, "prepare", "loop: process the images not processed yet", lambda args: bool(args[0]))


def serve(model_dir: Path, out: Path) -> None:
    """The gateway, its hooks installed: its URL on stdout; at the end of stdin, the timings written to `out`."""
    stamps: live_stages.Stamps = collections.defaultdict(dict)
    live_stages.install(stamps, {})
    timeline = live_engine.Timeline()
    live_engine.install(timeline, live_stages.current_turn)
    running = start_server(model_dir, Settings.from_env())  # GATEWAY_* variables, as `gateway serve` reads them
    spent: Seconds = collections.defaultdict(float)
    calls: collections.Counter[str] = collections.Counter()
    model = running.engine.loaded.model
    time_module(model, "forward", spent, calls)
    tower = getattr(model.model, "visual", None) or getattr(model.model, "vision_tower", None)  # Qwen/GLM, LLaVA-like
    assert tower is not None, "this model's vision tower is neither `visual` nor `vision_tower`"
    time_module(tower, "vision tower", spent, calls)
    time_prefills(spent, calls)
    time_loop_stages(running.engine, spent, calls)
    phases_before = running.engine.load().phase_seconds
    print(running.ws_url, flush=True)
    sys.stdin.read()
    encoder = running.engine.encoder_cache
    report: dict[str, Any] = {"stamps": stamps, "spans": timeline.spans, "marks": timeline.marks}
    report["generation_thread"] = {
        name: {"seconds": round(spent[name], 3), "calls": calls[name], "mean_ms": round(1000 * spent[name] / calls[name], 1)}
        for name in sorted(spent)
    }
    phases = running.engine.load().phase_seconds
    report["engine_phase_seconds"] = {k: round(v - phases_before.get(k, 0.0), 3) for k, v in sorted(phases.items())}
    report["encode_share_of_forward"] = round(spent["vision tower"] / spent["forward"], 4) if spent["forward"] else None
    report["encoder_cache"] = {"hits": encoder.hits, "encoded_beside_held": encoder.encoded, "images_held": len(encoder)}
    out.write_text(json.dumps(report))
    running.stop()


def engine_waits(spans: list[Any], marks: dict[str, dict[str, float]], stamps: Any, turns: list[tuple[str, Any]]) -> Any:
    """What each kind of turn waited on between its admission and its first token (scripts/live_engine.py)."""
    timeline = live_engine.Timeline()
    timeline.spans = [(s, e, kind, tuple(ids)) for s, e, kind, ids in spans]
    timeline.marks.update(marks)
    firsts: dict[str, tuple[str, float, float]] = {}
    for kind, result in turns:
        timing = (result.done or {}).get("timing") or {}
        submitted = stamps.get(result.id, {}).get("submitted")
        if submitted is None or timing.get("ttft_ms") is None:
            continue
        if kind == "live" and not result.id.endswith(".1"):
            kind = "live after the first"
        firsts[result.id] = (kind, submitted, submitted + timing["ttft_ms"] / 1000)
    return live_engine.summary(timeline, firsts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--model", type=Path, default=None, help="a model directory (default: the demo model)")
    parser.add_argument("--in-step", action="store_true", help="sessions ask at the same instants (LiveConfig.stagger off)")
    parser.add_argument("--serve", type=Path, default=None, help=argparse.SUPPRESS)  # the gateway's own process
    args = parser.parse_args()
    model_dir = args.model or cached_demo_model("small")
    if args.serve is not None:
        return serve(model_dir, args.serve)
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"live_profile.{os.getpid()}.json"
    command = [sys.executable, __file__, "--serve", str(out), "--model", str(model_dir)]
    gateway = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert gateway.stdin is not None and gateway.stdout is not None
    url = gateway.stdout.readline().strip()
    load_before = os.getloadavg()
    turns: list[tuple[str, Any]] = []
    config = LiveConfig(url=url, sessions=args.sessions, seconds=args.seconds, stagger=not args.in_step)
    report = asyncio.run(run_live(config, gateway.pid, turns))
    gateway.stdin.close()
    gateway.wait()
    served = json.loads(out.read_text())
    out.unlink()
    if os.environ.get("LIVE_PROFILE_DUMP"):  # the raw stamps and spans, to read one turn at a time
        Path(os.environ["LIVE_PROFILE_DUMP"]).write_text(json.dumps({**served, "turns": [(k, r.id, r.done) for k, r in turns]}))
    stamps = served.pop("stamps")
    report["stages"] = live_stages.breakdown(stamps, turns)
    report["engine_waits"] = engine_waits(served.pop("spans"), served.pop("marks"), stamps, turns)
    report.update(served)
    report["load_average"] = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
