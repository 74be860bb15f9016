"""Tracing's cost: tokens/s of one server on the demo model with OpenTelemetry traces on (a real OTLP/HTTP
exporter to a receiver here) and off, in alternating rounds (ABBA) of the same load; and tokens per CPU second
of this process (server, exporter and clients), which other processes' load on a shared machine disturbs less;
and the CPU one turn's trace costs on its own. Point PYTHONPATH at the code.

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_tracing.py [--size small] [--sessions 8] [--turns 4] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gateway.app import create_app
from gateway.client import GatewayClient
from gateway.config import Settings
from gateway.core.tracing import Tracer
from gateway.engine.contract import GenerationResult
from gateway.engine.demo import write_demo_model
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from gateway.server import make_server


class Discard(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes every export and keeps nothing."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(model: Path, settings: Settings) -> tuple[Any, Any]:
    """The real engine behind a real uvicorn in a thread; returns the app and the server."""
    engine = LocalEngine(load_model(model, model_id="gateway-demo"), max_batch=settings.max_batch)
    app = create_app(settings, engine=engine)
    server = make_server(app, settings, log_level="warning")
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return app, server


async def load(url: str, sessions: int, turns: int, max_tokens: int) -> tuple[float, float]:
    """Completion tokens per second of `sessions` clients, each running `turns` turns, and per CPU second."""

    async def one(n: int) -> int:
        tokens = 0
        async with GatewayClient(url) as client:
            for t in range(turns):
                result = await client.turn(f"t{t}", f"session {n} says hello {t}", max_tokens=max_tokens, temperature=0)
                assert result.done is not None, result.errors
                tokens += int(result.done["usage"]["completion_tokens"])
        return tokens

    started, cpu = time.perf_counter(), time.process_time()
    tokens = sum(await asyncio.gather(*(one(n) for n in range(sessions))))
    return tokens / (time.perf_counter() - started), tokens / (time.process_time() - cpu)


def trace_cpu_us(tracer: Tracer, turns: int = 2000) -> float:
    """CPU microseconds (all threads: the export's too) of one turn's whole trace, phases and attributes."""
    result = GenerationResult("length", "", (1,) * 16, 40, ttft_ms=5.0, total_ms=20.0, tokens_per_s=800.0, queue_ms=1.0)
    cpu = time.process_time()
    for n in range(turns):
        if n % 100 == 0:  # within the exporter's queue (2048 spans): none dropped, every one exported
            tracer.flush()
        trace = tracer.turn("00-" + "ab" * 16 + "-" + "cd" * 8 + "-01", "websocket")
        with trace.opened():
            for phase in ("admission", "images", "planning"):
                trace.phase(phase)
            trace.submitted("gateway-demo")
        trace.engine_done(result)
        trace.phase("store_write")
        trace.end()
    tracer.flush()
    return (time.process_time() - cpu) / turns * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "small"], default="small")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Discard)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    root = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    settings = Settings(port=8799, data_dir=str(root / "data"), otlp_traces_endpoint=endpoint, max_batch=16)
    app, server = serve(write_demo_model(root / "model", size=args.size), settings)
    on, off = app.state.runtime.turns.tracer, Tracer.from_endpoint(None)
    url = f"ws://127.0.0.1:{settings.port}/ws"
    rates: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
    asyncio.run(load(url, args.sessions, 1, args.max_tokens))  # warm-up
    for round_ in range(args.rounds):
        for mode in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
            app.state.runtime.turns.tracer = on if mode == "on" else off
            rates[mode].append(asyncio.run(load(url, args.sessions, args.turns, args.max_tokens)))
    on.flush()
    server.should_exit = True
    for i, unit in enumerate(("tokens/s", "tokens per CPU second")):
        median = {mode: statistics.median(r[i] for r in rates[mode]) for mode in rates}
        for mode in ("off", "on"):
            print(f"{unit}, tracing {mode}: {median[mode]:.1f} (rounds: {', '.join(f'{r[i]:.0f}' for r in rates[mode])})")
        print(f"{unit}, on / off: {median['on'] / median['off']:.3f}")
    print(f"one turn's trace: {trace_cpu_us(on):.0f} CPU µs   load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
