"""Measure what hostile clients cost everyone else: each attack runs against a real `gateway serve` while a
victim client times its connect + first token; prints the victim's p50/max, the attacker's answers and RSS.

    .venv/bin/python scripts/attacks.py [--only NAME ...] [--source TREE ...]

Run it on a quiet machine; compare runs only within one invocation (or alternate two source trees with
PYTHONPATH). The attacks are those of the availability issue: abandoned turns, connect-and-vanish,
`history` with images, and revived sessions with images."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import websockets
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def noise_png(seed: int, side: int) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (side, side), bytes(rng.getrandbits(8) for _ in range(side * side * 3)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class Server:
    """`gateway serve` in a subprocess with the given GATEWAY_* settings."""

    def __init__(self, env: dict[str, str], source: Path) -> None:
        self.port = free_port()
        data = tempfile.mkdtemp(prefix="attack-")
        environ = {**os.environ, "GATEWAY_DATA_DIR": data, "GATEWAY_LOG_LEVEL": "warning", "PYTHONPATH": str(source), **env}
        command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port)]
        # `-m` imports from the working directory first: run in the tree under test
        self.process = subprocess.Popen(command, env=environ, cwd=source, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:  # still draining abandoned turns: the measurement is over
            self.process.kill()
            self.process.wait(30)


async def open_client(url: str, address: str = "127.0.0.1") -> tuple[Any, dict[str, Any]]:
    # uncompressed: a turn of 16 MiB of images is past max_compressed_frame_bytes (9 MiB), and would not shrink
    options: dict[str, Any] = {"local_addr": (address, 0), "max_size": 1 << 28, "compression": None}
    ws = await websockets.connect(url, subprotocols=["gateway.msgpack"], **options)  # type: ignore[list-item]
    ready = msgpack.unpackb(await ws.recv(), raw=False)
    return ws, ready


async def until(ws: Any, *kinds: str, timeout_s: float = 60) -> dict[str, Any]:
    while True:
        frame = msgpack.unpackb(await asyncio.wait_for(ws.recv(), timeout_s), raw=False)
        if frame["type"] in kinds:
            return dict(frame)


async def send(ws: Any, frame: dict[str, Any]) -> None:
    await ws.send(msgpack.packb(frame, use_bin_type=True))


async def victim_once(url: str) -> tuple[float, str]:
    """Connect, one short turn: seconds to its first token (or refusal), and what it got (with the
    milliseconds its connection took until `ready`)."""
    start = time.perf_counter()
    ws, _ = await open_client(url, "127.0.0.250")
    ready_ms = (time.perf_counter() - start) * 1000
    try:
        await send(ws, {"type": "turn", "id": "v", "text": "hello", "options": {"max_tokens": 2, "temperature": 0}})
        frame = await until(ws, "token", "error", "done")
        return time.perf_counter() - start, f"{frame.get('code', frame['type'])} (ready in {ready_ms:.0f} ms)"
    finally:
        await ws.close()


async def victim(url: str, stop: asyncio.Event, samples: list[tuple[float, str]], began: list[float]) -> None:
    while not stop.is_set():
        began.append(time.perf_counter())
        samples.append(await victim_once(url))
        await asyncio.sleep(0.05)


async def abandoned_turns(server: Server, armed: asyncio.Event) -> str:
    """100 connections from 100 addresses each start an 1,800-token turn and vanish."""
    armed.set()

    async def one(n: int) -> str:
        ws, _ = await open_client(server.url, f"127.0.{2 + n // 200}.{1 + n % 200}")
        await send(ws, {"type": "turn", "id": "a", "text": "go", "options": {"max_tokens": 1800, "ignore_eos": True}})
        answer = await until(ws, "accepted", "error")
        ws.transport.abort()
        return str(answer.get("code", answer["type"]))

    answers = await asyncio.gather(*(one(n) for n in range(100)))
    return ", ".join(f"{answers.count(a)} {a}" for a in sorted(set(answers)))


async def connect_and_vanish(server: Server, armed: asyncio.Event) -> str:
    """2,000 connect-and-vanish cycles from one address."""
    armed.set()
    for _ in range(2000):
        ws, _ = await open_client(server.url, "127.0.9.9")
        ws.transport.abort()
    return "2000 sessions opened and left"


async def history_amplifier(server: Server, armed: asyncio.Event) -> str:
    """One session with 4 images of about 2 MB; 25 `history` requests with images, read as fast as they come."""
    ws, _ = await open_client(server.url, "127.0.8.8")
    images = [noise_png(seed, 820) for seed in range(4)]
    await send(ws, {"type": "turn", "id": "t", "text": "look", "images": images, "options": {"max_tokens": 1}})
    await until(ws, "done", timeout_s=120)
    armed.set()  # the victim measures from here: the attack is the history requests alone
    received, refused = 0, []
    for n in range(25):
        await send(ws, {"type": "history", "id": f"h{n}", "include_images": True})
        frame = await until(ws, "history", "error")
        if frame["type"] == "error":
            refused.append(frame["code"])
        else:
            received += sum(len(i["data"] or b"") for t in frame["turns"] for i in t["images"])
    await ws.close()
    codes = ", ".join(f"{refused.count(c)} {c}" for c in sorted(set(refused)))
    return f"{received / 2**20:.0f} MiB of images sent; refused: {codes or 'none'}"


async def revived_images(server: Server, armed: asyncio.Event) -> str:
    """Six stored sessions of about 15 MiB of images each, resumed by one connection one after another."""
    stored = []
    for seed in range(6):
        ws, ready = await open_client(server.url, "127.0.7.7")
        images = [noise_png(seed * 10 + k, 1150) for k in range(4)]
        await send(ws, {"type": "turn", "id": "t", "text": "look", "images": images, "options": {"max_tokens": 1}})
        await until(ws, "done", timeout_s=120)
        await ws.close()
        stored.append((ready["session"], ready["resume_token"]))
    await asyncio.sleep(1.5)  # GATEWAY_SESSION_GRACE_S=1: they leave memory
    armed.set()  # the victim measures from here: the attack is the resumes
    answers = []
    resumer, _ = await open_client(server.url, "127.0.7.8")
    for session, token in stored:
        await send(resumer, {"type": "resume", "id": "r", "session": session, "token": token})
        answer = await until(resumer, "resumed", "error")
        answers.append(str(answer.get("code", answer["type"])))
    holders = [resumer]
    # another client's image turn afterwards
    ws, _ = await open_client(server.url, "127.0.7.9")
    await send(ws, {"type": "turn", "id": "t", "text": "look", "images": [noise_png(99, 960)], "options": {"max_tokens": 1}})
    other = await until(ws, "accepted", "error", timeout_s=120)
    for holder in [*holders, ws]:
        await holder.close()
    resumes = ", ".join(f"{answers.count(a)} {a}" for a in sorted(set(answers)))
    return f"resumes: {resumes}; another client's image turn: {other.get('code', other['type'])}"


ATTACKS: dict[str, tuple[Callable[[Server, asyncio.Event], Awaitable[str]], dict[str, str]]] = {
    "abandoned": (abandoned_turns, {}),
    "vanish": (connect_and_vanish, {"GATEWAY_MAX_CONNECTIONS_PER_CLIENT": "64"}),
    "history": (history_amplifier, {}),
    "revive": (revived_images, {"GATEWAY_MAX_TOTAL_IMAGE_BYTES": str(48 << 20), "GATEWAY_SESSION_GRACE_S": "1"}),
}


async def measure(name: str, source: Path) -> dict[str, Any]:
    attack, env = ATTACKS[name]
    server = Server({"GATEWAY_TURNS_PER_MINUTE": "100000", "GATEWAY_FRAMES_PER_SECOND": "100000", **env}, source)
    try:
        calm = [await victim_once(server.url) for _ in range(20)]
        rss_before = server.rss_mib()
        stop, armed, samples = asyncio.Event(), asyncio.Event(), []
        attacking = asyncio.create_task(attack(server, armed))
        # the attack's own setup (sessions to abuse) is not measured; an attack that fails in it says why
        await asyncio.wait([attacking, asyncio.create_task(armed.wait())], return_when=asyncio.FIRST_COMPLETED)
        if attacking.done():
            attacking.result()
        armed_at, began = time.perf_counter(), []
        watcher = asyncio.create_task(victim(server.url, stop, samples, began))
        answer = await attacking
        attack_s = time.perf_counter() - armed_at
        await asyncio.sleep(3)  # the victim keeps measuring while the attack's effects last
        stop.set()
        await watcher
        times = [t for t, _ in samples]
        slowest = max(range(len(times)), key=times.__getitem__)
        refusals = [what for _, what in samples if what.split()[0] not in ("token", "done")]
        return {
            "attack": name,
            "source": str(source),
            "calm_p50_ms": round(statistics.median(t for t, _ in calm) * 1000, 1),
            "victim_p50_ms": round(statistics.median(times) * 1000, 1),
            "victim_p99_ms": round(sorted(times)[int(len(times) * 0.99)] * 1000, 1),
            "victim_max_ms": round(max(times) * 1000, 1),
            # when the slowest try began, after the attack began (it lasted attack_s, then 3 s more were measured)
            "slowest_at_s": round(began[slowest] - armed_at, 2),
            "slowest_got": samples[slowest][1],
            "attack_s": round(attack_s, 2),
            "victim_refused": f"{len(refusals)} of {len(samples)}" + (f" ({refusals[0]})" if refusals else ""),
            "attacker": answer,
            "rss_mib": f"{rss_before:.0f} -> {server.rss_mib():.0f}",
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(ATTACKS), default=sorted(ATTACKS))
    parser.add_argument("--source", nargs="*", type=Path, default=[ROOT], help="source trees to serve, alternated per attack")
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    for name in args.only:
        for source in args.source:
            print(json.dumps(asyncio.run(measure(name, source.resolve()))), flush=True)
    print(f"load average: {os.getloadavg()[0]:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
