"""Resume refusals on the SQLite store: the median time of a wrong token for a big stored session, for a
live session and of an unknown id, then another client's turn-to-`done` time, calm and while clients
loop wrong-token resumes of the big session. Point PYTHONPATH at the code to measure.

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_resume.py [--mib 32] [--tries 300] [--attackers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import uvicorn
import websockets

from gateway.app import create_app
from gateway.config import Settings
from gateway.core.session import Exchange, UserTurn
from gateway.core.store.base import SessionRecord
from gateway.core.store.open import SQLITE_FILE
from gateway.core.store.sqlite import SqliteStore
from gateway.engine.scripted import ScriptedEngine

BIG = "big-stored-session"


async def write_big_session(settings: Settings, mib: int) -> None:
    """A stored session of `mib` MiB of history (1 MiB per exchange), resumable with the token "right"."""
    store = SqliteStore(Path(settings.data_dir or ".") / SQLITE_FILE, settings)
    token_hash = hashlib.sha256(b"right").hexdigest()
    await store.save_meta(SessionRecord(id=BIG, token_hash=token_hash, owner="", updated_at=time.time()))
    turns = [Exchange(UserTurn(f"t{n}", os.urandom(1 << 19).hex()), "ok", False, n) for n in range(1, mib + 1)]
    await store.sync_history(BIG, turns)
    await store.close()


class Client:
    def __init__(self, url: str) -> None:
        self.url, self.ws, self.ready = url, None, {}

    async def open(self) -> Client:
        self.ws = await websockets.connect(self.url, subprotocols=["gateway.msgpack"], max_size=1 << 26)  # type: ignore[list-item]
        self.ready = await self.recv()
        return self

    async def recv(self) -> Any:
        return msgpack.unpackb(await self.ws.recv(), raw=False)  # type: ignore[attr-defined]

    async def ask(self, frame: dict[str, Any], answer: str) -> float:
        """Seconds from sending `frame` to the frame of type `answer`."""
        started = time.perf_counter()
        await self.ws.send(msgpack.packb(frame))  # type: ignore[attr-defined]
        while (await self.recv())["type"] != answer:
            pass
        return time.perf_counter() - started


async def refusals(url: str, live: str, tries: int) -> dict[str, float]:
    """Median ms of each refusal, the three kinds interleaved on one connection."""
    client = await Client(url).open()
    kinds = {"unknown id": "no-such-session", "wrong token, stored": BIG, "wrong token, live": live}
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(tries):
        for kind, session in kinds.items():
            times[kind].append(await client.ask({"type": "resume", "session": session, "token": "wrong"}, "error"))
    await client.ws.close()  # type: ignore[attr-defined]
    return {kind: statistics.median(t) * 1000 for kind, t in times.items()}


async def turn_times(url: str, turns: int) -> list[float]:
    client = await Client(url).open()
    times = [
        await client.ask({"type": "turn", "id": f"t{n}", "text": "hi", "options": {"max_tokens": 2}}, "done")
        for n in range(turns)
    ]
    await client.ws.close()  # type: ignore[attr-defined]
    return sorted(t * 1000 for t in times)


async def attack(url: str, stop: asyncio.Event) -> None:
    client = await Client(url).open()
    while not stop.is_set():
        await client.ask({"type": "resume", "session": BIG, "token": "wrong"}, "error")
    await client.ws.close()  # type: ignore[attr-defined]


async def measure(url: str, opts: argparse.Namespace) -> None:
    holder = await Client(url).open()  # keeps its session live
    for kind, ms in (await refusals(url, holder.ready["session"], opts.tries)).items():
        print(f"resume refused, {kind:20} median {ms:.3f} ms")
    calm = await turn_times(url, opts.turns)
    stop = asyncio.Event()
    attackers = [asyncio.create_task(attack(url, stop)) for _ in range(opts.attackers)]
    await asyncio.sleep(0.5)
    loaded = await turn_times(url, opts.turns)
    stop.set()
    await asyncio.gather(*attackers)
    for name, times in (("calm", calm), (f"{opts.attackers} wrong-token resumers", loaded)):
        print(f"another client's turn to done, {name:22} median {statistics.median(times):.1f} ms, max {times[-1]:.1f} ms")
    print(f"load average {os.getloadavg()[0]:.2f}")


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--mib", type=int, default=32)
    args.add_argument("--tries", type=int, default=300)
    args.add_argument("--turns", type=int, default=40)
    args.add_argument("--attackers", type=int, default=8)
    opts = args.parse_args()
    settings = Settings(engine="scripted", data_dir=tempfile.mkdtemp(), turns_per_minute=1e6, frames_per_second=1e6)
    asyncio.run(write_big_session(settings, opts.mib))
    port = 8000 + os.getpid() % 1000
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine=ScriptedEngine()), port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    try:
        asyncio.run(measure(f"ws://127.0.0.1:{port}/ws", opts))
    finally:
        server.should_exit = True


if __name__ == "__main__":
    main()
