"""Load on a real server: a thousand idle connections, concurrent turns beside slow and stalled readers,
clients that stop reading or vanish mid-send, and a thousand connect/turn/disconnect cycles that leave no
threads, tasks, descriptors or sessions behind. Figures go to test-artifacts/load-figures.json.

The clients run in a child process (this module, run with `python -c`), so that the test process holds
only the server: its memory, threads and file descriptors are then the server's own."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import os
import resource
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgpack
import pytest
import websockets

if TYPE_CHECKING:
    from tests.conftest import DemoDirs, RunningServer

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "test-artifacts" / "load-figures.json"
IDLE_CONNECTIONS = 500
FAST_CLIENTS, SLOW_CLIENTS, STALLED_CLIENTS = 30, 10, 10
CYCLES, CYCLE_CONCURRENCY = 1000, 8
MiB = 1024 * 1024


# ---- the client side, run in the child process --------------------------------------------------------


def packb(frame: dict[str, Any]) -> bytes:
    return bytes(msgpack.packb(frame, use_bin_type=True))


def unpackb(data: bytes | str) -> dict[str, Any]:
    return dict(json.loads(data)) if isinstance(data, str) else dict(msgpack.unpackb(data, raw=False))


def report(stage: str, **figures: Any) -> None:
    sys.stdout.write("@@ " + json.dumps({"stage": stage, **figures}) + "\n")
    sys.stdout.flush()


async def wait_for_word(word: str) -> None:
    line = await asyncio.to_thread(sys.stdin.readline)
    assert line.strip() == word, f"expected {word!r} from the test, got {line!r}"


async def open_session(url: str, **options: Any) -> tuple[Any, dict[str, Any]]:
    options = {"subprotocols": ["gateway.msgpack"], "max_size": 64 * MiB, "ping_interval": None, **options}
    ws = await websockets.connect(url, open_timeout=60, close_timeout=5, **options)
    ready = unpackb(await asyncio.wait_for(ws.recv(), 30))
    return ws, ready


async def read_turn(ws: Any, turn_id: str, pause_s: float = 0.0) -> dict[str, Any]:
    """Read one turn's frames up to its `done`; `pause_s` between frames makes a slow reader."""
    deltas: list[str] = []
    started = time.perf_counter()
    first_token: float | None = None
    while True:
        frame = unpackb(await asyncio.wait_for(ws.recv(), 60))
        if pause_s:
            await asyncio.sleep(pause_s)
        kind = frame["type"]
        if kind == "error":
            raise AssertionError(f"turn {turn_id}: {frame}")
        if kind == "token" and frame["id"] == turn_id:
            first_token = first_token or time.perf_counter()
            deltas.append(frame["text"])
        if kind == "done" and frame["id"] == turn_id:
            return {
                "text_matches": "".join(deltas) == frame["text"],
                "finish_reason": frame["finish_reason"],
                "tokens": frame["usage"]["completion_tokens"],
                "frames": len(deltas),
                "ttft_s": None if first_token is None else first_token - started,
                "total_s": time.perf_counter() - started,
            }


def turn_frame(turn_id: str, max_tokens: int, ignore_eos: bool = False) -> bytes:
    options = {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": ignore_eos}
    return packb({"type": "turn", "id": turn_id, "text": "tell me about the sky", "options": options})


async def scenario_idle(command: dict[str, Any]) -> None:
    """Open (and close) a warm-up batch; then, each time the test says `more`, open `n` more sessions
    (first without compression, then with permessage-deflate) and ping each; close all on `close`."""
    url, n = command["url"], command["n"]
    gate = asyncio.Semaphore(64)

    async def open_one(deflate: bool) -> tuple[Any, dict[str, Any]]:
        async with gate:
            return await open_session(url, **({} if deflate else {"compression": None}))

    async def ping(i: int, ws: Any) -> bool:
        await ws.send(packb({"type": "ping", "id": f"p{i}"}))
        pong = unpackb(await asyncio.wait_for(ws.recv(), 60))
        return pong.pop("seq", None) == 2 and pong == {"type": "pong", "id": f"p{i}"}

    warm = await asyncio.gather(*(open_one(i % 2 == 0) for i in range(command["warmup"])))
    await asyncio.gather(*(ping(i, ws) for i, (ws, _) in enumerate(warm)))
    await asyncio.gather(*(ws.close() for ws, _ in warm))
    report("warm")
    held: list[Any] = []
    for deflate in (False, True):
        await wait_for_word("more")
        started = time.perf_counter()
        sessions = await asyncio.gather(*(open_one(deflate) for _ in range(n)))
        opened_s = time.perf_counter() - started
        pongs = await asyncio.gather(*(ping(i, ws) for i, (ws, _) in enumerate(sessions)))
        held += [ws for ws, _ in sessions]
        report(
            "open",
            ready=sum(r["type"] == "ready" for _, r in sessions),
            sessions=len({r["session"] for _, r in sessions}),
            pongs=sum(pongs),
            deflate=sum(bool(ws.protocol.extensions) for ws, _ in sessions),
            open_s=round(opened_s, 2),
        )
    await wait_for_word("close")
    await asyncio.gather(*(ws.close() for ws in held))
    report("closed")


async def stalled_session(url: str) -> Any:
    """A client that stops reading: a tiny receive buffer and a one-message queue, so the server's
    writes back up into its own buffers quickly."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
    ws, _ = await open_session(url, sock=sock, max_queue=1)
    return ws


def noise_png(side: int) -> bytes:
    """An incompressible PNG of side x side pixels (about 3 bytes a pixel)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


async def stall(url: str, count: int, history_requests: int) -> tuple[list[Any], int]:
    """Clients that finish a short turn with a 1 MiB image, start a long turn, ask for the history with
    its image bytes (more than the kernel's socket buffers hold) and then never read again."""
    picture = noise_png(600)
    stalled = [await stalled_session(url) for _ in range(count)]
    for i, ws in enumerate(stalled):
        turn = {"type": "turn", "id": f"pic{i}", "text": "describe", "images": [picture], "options": {"max_tokens": 2}}
        await ws.send(packb(turn))
        await read_turn(ws, f"pic{i}")
    for i, ws in enumerate(stalled):  # all at once, so that their writers block together
        # 1500 tokens: with 2000 the context window (2048) would drop the exchange holding the image
        await ws.send(turn_frame(f"stall{i}", 1500, ignore_eos=True))
        for _ in range(history_requests):
            await ws.send(packb({"type": "history", "include_images": True}))
    return stalled, len(picture)


async def scenario_mixed_turns(command: dict[str, Any]) -> None:
    """Stalled clients stop reading; when told, fast and slow readers run their turns beside them."""
    url, tokens = command["url"], command["max_tokens"]
    stalled, image_bytes = await stall(url, command["stalled"], command["history_requests"])
    report("stalled", image_bytes=image_bytes)
    await wait_for_word("readers")

    async def reader(turn_id: str, pause_s: float) -> dict[str, Any]:
        ws, _ = await open_session(url, max_queue=1 if pause_s else 16)
        try:
            await ws.send(turn_frame(turn_id, tokens, ignore_eos=True))
            return await read_turn(ws, turn_id, pause_s)
        finally:
            await ws.close()

    started = time.perf_counter()
    fast = [reader(f"fast{i}", 0.0) for i in range(command["fast"])]
    slow = [reader(f"slow{i}", 0.1) for i in range(command["slow"])]
    results = await asyncio.gather(*fast, *slow, return_exceptions=True)
    failures = [repr(r) for r in results if isinstance(r, BaseException)]
    done = [r for r in results if isinstance(r, dict)]
    report(
        "readers_done",
        seconds=round(time.perf_counter() - started, 2),
        failures=failures[:5],
        fast=[r for r in done[: command["fast"]]] if not failures else [],
        slow=[r for r in done[command["fast"] :]] if not failures else [],
        stalled_still_open=sum(ws.close_code is None for ws in stalled),
    )
    await wait_for_word("close")
    for ws in stalled:
        ws.transport.abort()  # vanish without a closing handshake, as a dead client would
    report("closed")


async def scenario_vanish(command: dict[str, Any]) -> None:
    """Stalled clients vanish (TCP reset) while the server is in the middle of sending to them."""
    stalled, _ = await stall(command["url"], command["stalled"], command["history_requests"])
    report("stalled")
    await wait_for_word("vanish")
    for ws in stalled:
        ws.transport.abort()
    report("gone")


async def scenario_cycles(command: dict[str, Any]) -> None:
    """Connect, run a two-token turn, disconnect; `warmup` times, then (when told) `n` times."""
    url, concurrency = command["url"], command["concurrency"]

    async def cycle(i: int) -> None:
        ws, ready = await open_session(url)
        try:
            assert ready["type"] == "ready"
            await ws.send(turn_frame(f"c{i}", 2))
            result = await read_turn(ws, f"c{i}")
            assert result["text_matches"] and result["finish_reason"] in ("length", "stop"), result
        finally:
            await ws.close()

    async def run(count: int) -> list[str]:
        gate = asyncio.Semaphore(concurrency)

        async def gated(i: int) -> None:
            async with gate:
                await cycle(i)

        results = await asyncio.gather(*(gated(i) for i in range(count)), return_exceptions=True)
        return [repr(r) for r in results if isinstance(r, BaseException)]

    failures = await run(command["warmup"])
    report("warm", failures=failures[:5])
    await wait_for_word("go")
    started = time.perf_counter()
    failures = await run(command["n"])
    report("done", seconds=round(time.perf_counter() - started, 2), failures=failures[:5], failed=len(failures))
    await wait_for_word("exit")


SCENARIOS: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, None]]] = {
    "idle": scenario_idle,
    "mixed_turns": scenario_mixed_turns,
    "vanish": scenario_vanish,
    "cycles": scenario_cycles,
}


def child_main() -> None:
    """Entry point of the client process: one JSON command on stdin, reports on stdout."""
    command = json.loads(sys.stdin.readline())
    raise_fd_limit(4 * command.get("n", 0) + 256)
    try:
        asyncio.run(SCENARIOS[command["scenario"]](command))
    except BaseException:
        report("error", traceback=traceback.format_exc())
        raise SystemExit(1) from None


# ---- the test side: the server in this process, measured -----------------------------------------------


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class ClientProcess:
    """The clients' process: send it words on stdin, read its `@@ {json}` reports from stdout."""

    def __init__(self, command: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.e2e.test_load import child_main; child_main()"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.buffer = b""
        self.tell(json.dumps(command))

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def expect(self, stage: str, timeout_s: float, every: Callable[[], None] | None = None) -> dict[str, Any]:
        """Wait for the report named `stage`, calling `every` about ten times a second meanwhile."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                if line.startswith(b"@@ "):
                    message: dict[str, Any] = json.loads(line[3:])
                    assert message["stage"] == stage, message.get("traceback", message)
                    return message
            assert time.monotonic() < deadline, f"the client process did not report {stage!r} in {timeout_s} s"
            readable, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if every is not None:
                every()
            if readable:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"the client process exited with {self.proc.wait()}"
                self.buffer += chunk

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()


def rss_bytes() -> int:
    """This process's resident memory, after handing free heap pages back to the OS (so that memory
    freed by earlier tests is not silently reused and a later delta measures new memory)."""
    gc.collect()
    if LIBC is not None:
        LIBC.malloc_trim(0)
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


try:
    LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: the deltas are then a lower bound
    LIBC = None


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def record(section: str, figures: dict[str, Any]) -> None:
    """Merge one test's figures into test-artifacts/load-figures.json."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    existing[section] = figures
    FIGURES.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
    print(f"\n[load] {section}: {json.dumps(figures, sort_keys=True)}")


def settle(predicate: Callable[[], bool], timeout_s: float = 120.0) -> bool:
    """Whether `predicate` holds within `timeout_s`: a limit only a hang reaches (a loaded machine frees late, not never)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def load_server(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    from gateway.config import Settings
    from tests.conftest import start_server

    raise_fd_limit(4 * IDLE_CONNECTIONS + 1024)
    settings = Settings(
        max_connections=4 * IDLE_CONNECTIONS,
        max_connections_per_client=4 * IDLE_CONNECTIONS,  # every test client comes from 127.0.0.1
        max_sessions_per_client=8 * IDLE_CONNECTIONS,
        # History frames with images are how these tests owe a reader more than loopback buffers hold; the
        # per-address budget on them (tests/e2e/test_image_budget.py) would share one burst among every client here.
        history_image_bytes_per_second=1 << 40,
        frames_per_second=1e6,
        turns_per_minute=1e7,
    )
    running = start_server(demo_dirs.model, settings)
    yield running
    running.stop()


def connections_gauge(server: RunningServer) -> float:
    """The `gateway_connections` gauge that /metrics reports."""
    return float(server.app.state.runtime.metrics.registry.get_sample_value("gateway_connections") or 0.0)


def uvicorn_connections(server: RunningServer) -> int:
    return len(server.server.server_state.connections)


def blocked_writers(server: RunningServer) -> int:
    """Connections whose transport is past its high-water mark: the client is not reading."""
    writable = [getattr(protocol, "writable", None) for protocol in list(server.server.server_state.connections)]
    return sum(isinstance(event, asyncio.Event) and not event.is_set() for event in writable)


def server_loop_tasks(server: RunningServer) -> int:
    """The number of asyncio tasks on the server's event loop, counted on that loop."""
    loop = server.server.servers[0].get_loop()

    async def count() -> int:
        return len(asyncio.all_tasks())

    return asyncio.run_coroutine_threadsafe(count(), loop).result(10)


def test_idle_connections_are_cheap_and_answer(load_server: RunningServer) -> None:
    """500 plain connections, then 500 more with permessage-deflate, all held at once: each gets `ready`
    and answers a ping; the server's memory per connection of each kind is measured (RSS delta / N);
    no thread is spent per connection; all are freed on close."""
    registry = load_server.app.state.ws.connections
    clients = ClientProcess({"scenario": "idle", "url": load_server.ws_url, "n": IDLE_CONNECTIONS, "warmup": 8})
    figures: dict[str, Any] = {"connections_per_batch": IDLE_CONNECTIONS}
    batches = []
    try:
        clients.expect("warm", 120)
        assert settle(lambda: len(registry) == 0)
        rss, threads, fds = rss_bytes(), threading.active_count(), open_fds()
        figures.update(server_rss_before_mib=round(rss / MiB, 1), threads_before=threads, fds_before=fds)
        for kind in ("uncompressed", "deflate"):
            clients.tell("more")
            batches.append(clients.expect("open", 120))
            rss_now = rss_bytes()
            figures[f"server_rss_per_connection_kib_{kind}"] = round((rss_now - rss) / IDLE_CONNECTIONS / 1024, 1)
            figures[f"open_seconds_{kind}"] = batches[-1]["open_s"]
            rss = rss_now
        figures.update(
            server_rss_open_mib=round(rss / MiB, 1),
            threads_open=threading.active_count(),
            fds_open=open_fds(),
            sessions_in_registry=len(registry),
        )
        clients.tell("close")
        clients.expect("closed", 60)
    finally:
        clients.close()
    freed = settle(lambda: len(registry) == 0 and uvicorn_connections(load_server) == 0)
    record("idle_connections", figures)
    for batch in batches:
        assert batch["ready"] == batch["sessions"] == batch["pongs"] == IDLE_CONNECTIONS
    assert [batch["deflate"] for batch in batches] == [0, IDLE_CONNECTIONS]
    assert figures["sessions_in_registry"] == 2 * IDLE_CONNECTIONS
    assert figures["fds_open"] - figures["fds_before"] >= 2 * IDLE_CONNECTIONS  # one socket each, server side
    assert figures["threads_open"] <= figures["threads_before"] + 2, "a thread per connection"
    for kind in ("uncompressed", "deflate"):
        assert figures[f"server_rss_per_connection_kib_{kind}"] < 256, figures
    assert freed, f"{len(registry)} sessions, {uvicorn_connections(load_server)} uvicorn connections left"


def test_50_concurrent_turns_beside_slow_and_stalled_readers(load_server: RunningServer) -> None:
    """10 clients stop reading with megabytes owed to them (their writers blocked); then 30 fast readers
    and 10 slow ones (a frame per 100 ms) run turns: every reader gets its `done` with the streamed text
    equal to `done.text`; memory stays bounded; the stalled clients' turns stop once they vanish."""
    registry, engine = load_server.app.state.ws.connections, load_server.engine
    assert settle(lambda: len(registry) == 0)
    rss_before = rss_bytes()
    peak = [rss_before]

    def sample() -> None:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    peak[0] = max(peak[0], int(line.split()[1]) * 1024)

    command = {
        "scenario": "mixed_turns",
        "url": load_server.ws_url,
        "fast": FAST_CLIENTS,
        "slow": SLOW_CLIENTS,
        "stalled": STALLED_CLIENTS,
        "max_tokens": 48,
        "history_requests": 40,  # 40 MiB owed to each: past what loopback buffers take (receive autotunes to 32 MiB)
    }
    clients = ClientProcess(command)
    try:
        stalled = clients.expect("stalled", 60, every=sample)
        settle(lambda: blocked_writers(load_server) >= STALLED_CLIENTS, timeout_s=60)
        blocked_before_readers = blocked_writers(load_server)
        clients.tell("readers")
        readers = clients.expect("readers_done", 150, every=sample)
        open_with_stalled, blocked_after_readers = len(registry), blocked_writers(load_server)
        clients.tell("close")
        clients.expect("closed", 30)
    finally:
        clients.close()
    freed = settle(lambda: len(registry) == 0 and not engine.busy.is_set())
    fast, slow = readers["fast"], readers["slow"]
    record(
        "concurrent_turns",
        {
            "fast_clients": FAST_CLIENTS,
            "slow_clients": SLOW_CLIENTS,
            "stalled_clients": STALLED_CLIENTS,
            "readers_seconds": readers["seconds"],
            "fast_ttft_s_median": round(statistics.median(r["ttft_s"] for r in fast), 3) if fast else None,
            "fast_total_s_max": round(max(r["total_s"] for r in fast), 3) if fast else None,
            "slow_total_s_max": round(max(r["total_s"] for r in slow), 3) if slow else None,
            "slow_frames_median": statistics.median(r["frames"] for r in slow) if slow else None,
            "stalled_still_open_when_readers_done": readers["stalled_still_open"],
            "sessions_open_when_readers_done": open_with_stalled,
            "stalled_image_bytes": stalled["image_bytes"],
            "server_writers_blocked_before_readers": blocked_before_readers,
            "server_writers_blocked_when_readers_done": blocked_after_readers,
            "server_rss_growth_peak_mib": round((peak[0] - rss_before) / MiB, 1),
            "connections_gauge_after_all_left": connections_gauge(load_server),
        },
    )
    assert blocked_before_readers == STALLED_CLIENTS, "the stalled clients never filled their buffers"
    assert readers["failures"] == [], readers["failures"]
    assert len(fast) == FAST_CLIENTS and len(slow) == SLOW_CLIENTS
    for result in fast + slow:
        assert result["text_matches"] and result["finish_reason"] == "length" and result["tokens"] == 48, result
    assert peak[0] - rss_before < 200 * MiB
    assert freed, f"{len(registry)} sessions left; engine busy: {engine.busy.is_set()}"


def test_clients_vanishing_mid_send_are_fully_released(load_server: RunningServer) -> None:
    """Five clients whose server-side writers are blocked mid-send reset their TCP connections: their
    sessions leave the registry and the `gateway_connections` gauge comes back to where it was."""
    registry = load_server.app.state.ws.connections
    assert settle(lambda: len(registry) == 0)
    gauge_before = connections_gauge(load_server)
    clients = ClientProcess({"scenario": "vanish", "url": load_server.ws_url, "stalled": 5, "history_requests": 40})
    try:
        clients.expect("stalled", 60)
        assert settle(lambda: blocked_writers(load_server) >= 5, timeout_s=60), "the writers never blocked"
        clients.tell("vanish")
        clients.expect("gone", 30)
    finally:
        clients.close()
    assert settle(lambda: len(registry) == 0 and uvicorn_connections(load_server) == 0)
    assert settle(lambda: connections_gauge(load_server) == gauge_before, timeout_s=60), (
        f"gateway_connections: {gauge_before} before, {connections_gauge(load_server)} after, 0 sessions open"
    )


def test_slow_consumer_closed_by_the_server_releases_its_socket(demo_dirs: DemoDirs) -> None:
    """Three clients stop reading with megabytes owed; after `send_timeout_s` the server closes them,
    and their sockets (and the buffers behind them) are released even though the clients never read."""
    from gateway.config import Settings
    from tests.conftest import start_server

    impatient = start_server(demo_dirs.model, Settings(send_timeout_s=2.0, frames_per_second=1e6, turns_per_minute=1e7))
    registry = impatient.app.state.ws.connections

    def orphans() -> int:  # sockets the server still holds for sessions it has already closed
        return uvicorn_connections(impatient) - len(registry)

    clients = ClientProcess({"scenario": "vanish", "url": impatient.ws_url, "stalled": 3, "history_requests": 40})
    try:
        clients.expect("stalled", 60)
        assert settle(lambda: blocked_writers(impatient) >= 1, timeout_s=60), "no writer ever blocked"
        assert settle(lambda: len(registry) < 3, timeout_s=60), "the server closed no slow consumer"
        released = settle(lambda: orphans() == 0, timeout_s=60)
        orphaned = orphans()
        lingering = [p.transport.get_write_buffer_size() for p in list(impatient.server.server_state.connections)]
        record(
            "slow_consumers_closed_by_server",
            {"closed_sessions_whose_socket_is_still_open": orphaned, "bytes_buffered_per_socket": lingering},
        )
        clients.tell("vanish")
        clients.expect("gone", 30)
    finally:
        clients.close()
        impatient.stop()
    assert released, f"{orphaned} sockets still open, {sum(lingering)} bytes buffered, for clients already closed"


def test_1000_connect_turn_disconnect_cycles_leave_nothing_behind(load_server: RunningServer) -> None:
    """1,000 cycles of connect / two-token turn / disconnect, 8 at a time, all succeed; afterwards the
    server's threads, event-loop tasks, file descriptors and sessions are back at their baseline."""
    registry = load_server.app.state.ws.connections

    def measure() -> dict[str, int]:
        return {
            "threads": threading.active_count(),
            "loop_tasks": server_loop_tasks(load_server),
            "fds": open_fds(),
            "sessions": len(registry),
            "uvicorn_connections": uvicorn_connections(load_server),
            "connections_gauge": int(connections_gauge(load_server)),
            "rss_mib": round(rss_bytes() / MiB),
        }

    def back_to(baseline: dict[str, int]) -> bool:
        now = measure()
        return (
            now["sessions"] == 0
            and now["uvicorn_connections"] == 0
            and now["threads"] <= baseline["threads"] + 2
            and now["loop_tasks"] <= baseline["loop_tasks"] + 2
            and now["fds"] <= baseline["fds"] + 4
            and now["connections_gauge"] == baseline["connections_gauge"]
        )

    command = {"scenario": "cycles", "url": load_server.ws_url, "n": CYCLES, "warmup": 64, "concurrency": CYCLE_CONCURRENCY}
    clients = ClientProcess(command)
    try:
        warm = clients.expect("warm", 120)
        assert warm["failures"] == [], warm["failures"]
        assert settle(lambda: len(registry) == 0 and uvicorn_connections(load_server) == 0)
        baseline = measure()
        clients.tell("go")
        done = clients.expect("done", 240)
        settled = settle(lambda: back_to(baseline), timeout_s=60)
        after = measure()
        clients.tell("exit")
    finally:
        clients.close()
    record(
        "connect_turn_disconnect_cycles",
        {
            "cycles": CYCLES,
            "concurrency": CYCLE_CONCURRENCY,
            "seconds": done["seconds"],
            "cycles_per_second": round(CYCLES / done["seconds"], 1),
            "failed": done["failed"],
            "baseline": baseline,
            "after": after,
        },
    )
    assert done["failed"] == 0, done["failures"]
    assert settled, f"not back to baseline: before {baseline}, after {after}"
    assert after["rss_mib"] - baseline["rss_mib"] < 100
