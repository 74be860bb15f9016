"""Issue 20, finding 1: a fresh client's connect + first-token time while hostile schemas arrive, the event
loop's slowest callback (CPU), and RSS. The attackers run in a process of their own, so their encoding does
not share the server's GIL.

    PYTHONPATH=$PWD .venv/bin/python scripts/grammar_attack.py LABEL
(for a tree without the grammar pool, copy tests/loop_watch.py and this script into it first)
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

import msgpack
import websockets

ATTACKS = [("12 x 1.7 MB pattern schemas, 4 connections", "huge", 4), ("12 x 0.9 MB pattern schemas, 4 connections", "large", 4)]
ATTACKS.append(("3 x 9,000-property schemas, 3 connections", "required", 3))


def pattern_format(seed: int, words: int) -> dict[str, Any]:
    pattern = "(" + "|".join(f"w{seed}x{i}" for i in range(words)) + ")"
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": pattern}}, "required": ["a"]}
    return {"type": "json_schema", "json_schema": {"name": f"p{seed}", "schema": schema}}


def required_format(seed: int) -> dict[str, Any]:
    def group(g: int) -> dict[str, Any]:
        properties = {f"k{seed}_{g}_{i}": {"type": "integer"} for i in range(1000)}
        return {"type": "object", "properties": properties, "required": list(properties)}

    properties = {f"g{g}": group(g) for g in range(9)}
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {"type": "json_schema", "json_schema": {"name": f"r{seed}", "schema": schema}}


def formats(kind: str) -> list[dict[str, Any]]:
    if kind == "huge":
        return [pattern_format(s, 150_000) for s in range(12)]
    if kind == "large":
        return [pattern_format(100 + s, 80_000) for s in range(12)]
    return [required_format(s) for s in range(3)]


async def recv(ws: Any) -> dict[str, Any]:
    data = await ws.recv()
    return dict(json.loads(data) if isinstance(data, str) else msgpack.unpackb(data, raw=False))


def connect(url: str, **kwargs: Any) -> Any:
    return websockets.connect(url, max_size=None, open_timeout=120, ping_timeout=None, **kwargs)


# ---- the attacker process -------------------------------------------------------------------------


async def attack(url: str, frames: list[bytes], tag: str, answers: list[list[Any]]) -> None:
    async with connect(url, compression=None) as ws:
        await recv(ws)
        for n, frame in enumerate(frames):
            await ws.send(frame)
            while (answer := await recv(ws))["type"] not in ("done", "error") or answer.get("id") != f"{tag}{n}":
                pass
            answers.append([answer["type"], answer.get("code"), (answer.get("message") or "")[:70]])


async def attacker(url: str, kind: str, connections: int) -> None:
    """Encode every frame first, say READY, wait for a line, attack, print the answers as JSON."""
    chosen = formats(kind)
    frames = [
        [
            msgpack.packb({"type": "turn", "id": f"a{i}-{n}", "text": "x", "options": {"max_tokens": 2, "response_format": f}})
            for n, f in enumerate(chosen[i::connections])
        ]
        for i in range(connections)
    ]
    print("READY", flush=True)
    sys.stdin.readline()
    answers: list[list[Any]] = []
    await asyncio.gather(*(attack(url, frames[i], f"a{i}-", answers) for i in range(connections)))
    print(json.dumps(answers), flush=True)


# ---- the measuring process -----------------------------------------------------------------------


def p99(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.99)]


def rss_mib() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def first_token_ms(url: str, n: int) -> float:
    """Connect, wait for `ready`, send a one-token turn: milliseconds until its token (or error)."""
    began = time.perf_counter()
    async with connect(url) as ws:
        await recv(ws)
        await ws.send(msgpack.packb({"type": "turn", "id": f"v{n}", "text": "hello", "options": {"max_tokens": 1}}))
        while (await recv(ws))["type"] not in ("token", "done", "error"):
            pass
    return (time.perf_counter() - began) * 1000


LOOP_STEPS: dict[str, float] = {}  # the server loop's CPU seconds in each sliced step over client JSON


def timing_steps() -> None:
    """Time the sliced steps every big frame takes on the loop (msgpack, the bounds check, the schema's hash),
    each step by its thread's CPU clock: what the loop spends on the attack's JSON, apart from the rest."""
    from gateway.core import format_keys
    from gateway.ws import protocol

    def timed(name: str, steps: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            walk = steps(*args, **kwargs)
            while True:
                began = time.thread_time()
                try:
                    next(walk)
                except StopIteration as done:
                    return done.value
                finally:
                    LOOP_STEPS[name] = LOOP_STEPS.get(name, 0.0) + time.thread_time() - began
                yield

        return run

    protocol.unpack_steps = timed("msgpack", protocol.unpack_steps)
    protocol.json_value_checks = timed("bounds", protocol.json_value_checks)
    format_keys.format_key_steps = timed("hash", format_keys.format_key_steps)


async def measure(server: Any, label: str, name: str, kind: str, connections: int) -> None:
    from tests.loop_watch import watching

    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--attacker", server.ws_url, kind, str(connections), stdin=-1, stdout=-1
    )
    assert process.stdin and process.stdout and (await process.stdout.readline()).startswith(b"READY")
    samples: list[float] = []
    phases_before, steps_before = server.engine.load().phase_seconds, dict(LOOP_STEPS)
    with watching(server.thread) as watch:
        process.stdin.write(b"go\n")
        began = time.perf_counter()
        answering = asyncio.create_task(process.stdout.readline())
        while not answering.done():
            samples.append(await first_token_ms(server.ws_url, len(samples)))
            await asyncio.sleep(0.02)
        took = time.perf_counter() - began
    answers: dict[str, int] = {}
    for answer in json.loads(answering.result()):
        answers[" ".join(str(a) for a in answer)] = answers.get(" ".join(str(a) for a in answer), 0) + 1
    await process.wait()
    print(
        f"[{label}] {name}: {took:.1f} s; victim connect+first token median {statistics.median(samples):.0f} ms, "
        f"p99 {p99(samples):.0f} ms, max {max(samples):.0f} ms ({len(samples)} tries); "
        f"slowest loop callback {watch.slowest_ms:.0f} ms CPU, "
        f"{len(watch.slow)} over 50 ms, loop CPU {watch.cpu_ms:.0f} ms in all; RSS {rss_mib():.0f} MiB"
    )
    spent = {p: s - phases_before[p] for p, s in server.engine.load().phase_seconds.items()}
    steps = {step: seconds - steps_before.get(step, 0.0) for step, seconds in LOOP_STEPS.items()}
    slowest = max(range(len(samples)), key=samples.__getitem__)
    print(
        "      loop CPU on the frames' JSON: "
        + ", ".join(f"{step} {seconds * 1000:.0f} ms" for step, seconds in steps.items())
        + f"; the slowest try was number {slowest + 1}"
    )
    print("      generation thread: " + ", ".join(f"{p} {s:.2f} s" for p, s in sorted(spent.items(), key=lambda x: -x[1])))
    for answer, count in answers.items():
        print(f"      attacker got {count} x {answer}")


async def main(server: Any, label: str) -> None:
    for n in range(3):
        await first_token_ms(server.ws_url, -n)
    # CALM_S=60: measure the calm victim that long (as long as an attack), to tell the machine's spikes from the attack's.
    calm: list[float] = []
    until = time.perf_counter() + float(os.environ.get("CALM_S", "0"))
    while len(calm) < 15 or time.perf_counter() < until:
        calm.append(await first_token_ms(server.ws_url, 100 + len(calm)))
        await asyncio.sleep(0.02 if len(calm) > 15 else 0)
    median, most = statistics.median(calm), max(calm)
    print(
        f"[{label}] calm: victim median {median:.0f} ms, p99 {p99(calm):.0f} ms, max {most:.0f} ms ({len(calm)} tries); "
        f"RSS {rss_mib():.0f} MiB"
    )
    only = os.environ.get("ATTACKS", "").split(",")
    for name, kind, connections in ATTACKS:
        if only != [""] and kind not in only:
            continue
        await measure(server, label, name, kind, connections)


def run(label: str) -> None:
    sys.path.insert(0, os.getcwd())
    from gateway.config import Settings
    from gateway.engine.demo import write_demo_model
    from tests.conftest import start_server

    model = write_demo_model(pathlib.Path(tempfile.mkdtemp()) / "model")
    server = start_server(model, Settings())
    timing_steps()
    try:
        asyncio.run(main(server, label))
    finally:
        server.stop()


if __name__ == "__main__":
    if sys.argv[1] == "--attacker":
        asyncio.run(attacker(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        run(sys.argv[1])
