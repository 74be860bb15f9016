"""Sessions that outlive the socket: numbered frames, resume and replay, takeover, forget, expiry, and
the SQLite store across a kill -9 — on a real server with real clients."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
import websockets

from gateway.config import Settings
from gateway.core.store.sqlite import READERS
from tests.conftest import DemoDirs, RunningServer, free_port, start_server, wait_until
from tests.e2e.waits import next_of

GREEDY = {"temperature": 0}


class Raw:
    """A msgpack WebSocket client that keeps every frame, so tests can check `seq`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: Any = None
        self.frames: list[dict[str, Any]] = []
        self.ready: dict[str, Any] = {}

    async def open(self) -> Raw:
        self.ws = await websockets.connect(self.url, subprotocols=["gateway.msgpack"], max_size=1 << 26)  # type: ignore[list-item]
        self.ready = await self.recv()
        return self

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(msgpack.packb(frame, use_bin_type=True))

    async def recv(self, timeout_s: float = 60) -> dict[str, Any]:
        frame = dict(msgpack.unpackb(await asyncio.wait_for(self.ws.recv(), timeout_s), raw=False))
        self.frames.append(frame)
        return frame

    async def until(self, kind: str, timeout_s: float = 60) -> dict[str, Any]:
        return await next_of(lambda: self.recv(timeout_s), kind)

    def abort(self) -> None:
        """Drop the TCP connection with no close frame, as a lost network does."""
        self.ws.transport.abort()

    async def close(self) -> None:
        await self.ws.close()


@pytest.fixture(scope="module")
def durable(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, Settings(turns_per_minute=1e6, frames_per_second=1e6))
    yield running
    running.stop()


def live_session(server: RunningServer, session_id: str) -> Any:
    return server.app.state.ws.hub.live.get(session_id)


async def test_frames_are_numbered_from_one(durable: RunningServer) -> None:
    """`ready` is seq 1 and every later frame of the session counts on by one."""
    client = await Raw(durable.ws_url).open()
    await client.send({"type": "turn", "id": "t", "text": "hello", "options": {"max_tokens": 5, **GREEDY}})
    await client.until("done")
    await client.close()
    seqs = [client.ready["seq"]] + [f["seq"] for f in client.frames[1:]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(client.ready["resume_token"]) >= 22  # at least 128 bits, url-safe base64


async def test_drop_mid_reply_then_resume_replays_exactly_once(durable: RunningServer) -> None:
    """The TCP connection drops mid-reply; a new connection resumes: the text before the drop, the
    replayed frames and the live ones make `done.text`, each seq once, increasing, without gaps."""
    first = await Raw(durable.ws_url).open()
    session, token = first.ready["session"], first.ready["resume_token"]
    await first.send(
        {"type": "turn", "id": "long", "text": "tell me", "options": {"max_tokens": 300, "ignore_eos": True, **GREEDY}}
    )
    while sum(1 for f in first.frames if f["type"] == "token") < 3:
        await first.recv()
    first.abort()
    await asyncio.sleep(0.2)  # the turn goes on generating while no one listens
    seen = [f for f in first.frames]
    last_seq = max(f["seq"] for f in seen)
    second = await Raw(durable.ws_url).open()
    await second.send({"type": "resume", "session": session, "token": token, "last_seq": last_seq})
    resumed = await second.until("resumed")
    done = await second.until("done")
    await second.send({"type": "history"})
    history_ = await second.until("history")
    await second.close()
    after = second.frames[second.frames.index(resumed) + 1 :]
    stream = [first.ready, *seen[1:], *after]
    seqs = [f["seq"] for f in stream if f["type"] != "history"]
    assert resumed["session"] == session and not resumed["gap"] and resumed["replayed"] >= 1
    assert seqs == list(range(1, len(seqs) + 1))
    text = "".join(f["text"] for f in stream if f["type"] == "token")
    assert text == done["text"] and done["finish_reason"] == "length"
    assert [t["text"] for t in history_["turns"]] == ["tell me", done["text"]]


async def test_wrong_token_and_unknown_session_fail_alike(durable: RunningServer) -> None:
    """A wrong token and an unknown session get the same `resume_failed`; the fresh session stays usable."""
    owner = await Raw(durable.ws_url).open()
    client = await Raw(durable.ws_url).open()
    await client.send({"type": "resume", "session": owner.ready["session"], "token": "x" * 32})
    wrong = await client.until("error")
    await client.send({"type": "resume", "session": "no-such-session", "token": "x" * 32})
    unknown = await client.until("error")
    await client.send({"type": "ping", "id": "still"})
    pong = await client.until("pong")
    await owner.close()
    await client.close()
    assert wrong["code"] == unknown["code"] == "resume_failed" and wrong["message"] == unknown["message"]
    assert pong["id"] == "still"


async def test_resume_takes_over_a_live_connection(durable: RunningServer) -> None:
    """Resuming a session another connection holds: the old one gets `closing` and 4003."""
    old = await Raw(durable.ws_url).open()
    new = await Raw(durable.ws_url).open()
    await new.send({"type": "resume", "session": old.ready["session"], "token": old.ready["resume_token"], "last_seq": 1})
    resumed = await new.until("resumed")
    closing = await old.until("closing")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await old.recv(5)
    await new.send({"type": "turn", "id": "t", "text": "mine now", "options": {"max_tokens": 2}})
    done = await new.until("done")
    await new.close()
    assert resumed["gap"] is False and closing["code"] == 4003 and closed.value.rcvd.code == 4003  # type: ignore[union-attr]
    assert done["finish_reason"] in ("length", "stop")


async def test_forget_deletes_the_session(durable: RunningServer) -> None:
    """`forget` answers with a fresh session; the old one cannot be resumed any more."""
    client = await Raw(durable.ws_url).open()
    old, token = client.ready["session"], client.ready["resume_token"]
    await client.send({"type": "configure", "system": "remember me"})
    await client.until("configured")
    await client.send({"type": "forget", "id": "f"})
    forgotten = await client.until("forgotten")
    await client.close()
    later = await Raw(durable.ws_url).open()
    await later.send({"type": "resume", "session": old, "token": token})
    failed = await later.until("error")
    await later.close()
    assert forgotten["session"] != old and forgotten["id"] == "f"
    assert failed["code"] == "resume_failed" and live_session(durable, old) is None
    assert await durable.app.state.ws.hub.store.load(old) is None


async def test_expired_session_cannot_be_resumed(demo_dirs: DemoDirs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the grace period a session leaves memory; past the TTL it is gone from the store too (the
    hub's clock is moved past the TTL, so a slow machine cannot make the first resume late)."""
    import gateway.ws.hub

    running = start_server(demo_dirs.model, Settings(session_grace_s=0.1, session_ttl_s=60))
    try:
        client = await Raw(running.ws_url).open()
        session, token = client.ready["session"], client.ready["resume_token"]
        await client.send({"type": "configure", "system": "short-lived"})
        await client.until("configured")
        await client.close()
        await wait_until(lambda: live_session(running, session) is None)
        soon = await Raw(running.ws_url).open()
        await soon.send({"type": "resume", "session": session, "token": token})
        resumed = await soon.until("resumed")  # unloaded, but within the TTL: back from the store
        await soon.close()
        await wait_until(lambda: live_session(running, session) is None)
        past_ttl = time.time() + 61
        monkeypatch.setattr(gateway.ws.hub, "time", SimpleNamespace(time=lambda: past_ttl, monotonic=time.monotonic))
        late = await Raw(running.ws_url).open()
        await late.send({"type": "resume", "session": session, "token": token})
        failed = await late.until("error")
        await late.close()
    finally:
        running.stop()
    assert resumed["gap"] is True and failed["code"] == "resume_failed"


# ---- kill -9 and a restart on the same data directory --------------------------------------------


def serve_process(model: Path, data_dir: Path, port: int, store: str = "sqlite") -> subprocess.Popen[bytes]:
    env = dict(os.environ, GATEWAY_MODEL=str(model), GATEWAY_PORT=str(port), GATEWAY_DATA_DIR=str(data_dir))
    env.update(GATEWAY_SESSION_STORE=store, GATEWAY_MODEL_ID="gateway-demo", GATEWAY_LOG_LEVEL="warning")
    command = [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main(['serve']))"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
        try:
            client = await Raw(url).open()
            await client.close()
            return
        except (OSError, websockets.InvalidStatus, websockets.InvalidMessage, asyncio.TimeoutError):
            await asyncio.sleep(0.2)
    raise AssertionError("the server did not come up")


async def test_kill_9_and_restart_keeps_the_conversation(demo_dirs: DemoDirs, tmp_path: Path) -> None:
    """kill -9 mid-conversation (a turn running), restart on the same data directory, resume: `gap`,
    the same system prompt and history (the running turn as partial), and the next turn's prompt holds them."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    process = serve_process(demo_dirs.model, tmp_path, port)
    try:
        await wait_ready(url, process)
        client = await Raw(url).open()
        session, token = client.ready["session"], client.ready["resume_token"]
        await client.send({"type": "configure", "system": "You are durable."})
        await client.until("configured")
        await client.send({"type": "turn", "id": "t1", "text": "first question", "options": {"max_tokens": 6, **GREEDY}})
        first = await client.until("done")
        await client.send({"type": "turn", "id": "t2", "text": "second", "options": {"max_tokens": 2000, "ignore_eos": True}})
        await client.until("token")
        await client.send({"type": "history"})
        before = await client.until("history")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        process = serve_process(demo_dirs.model, tmp_path, port)
        await wait_ready(url, process)
        again = await Raw(url).open()
        await again.send({"type": "resume", "session": session, "token": token, "last_seq": 5})
        resumed = await again.until("resumed")
        await again.send({"type": "history"})
        after = await again.until("history")
        await again.send({"type": "turn", "id": "t3", "text": "third", "options": {"max_tokens": 1}})
        accepted = await again.until("accepted")
        await again.close()
        fresh = await Raw(url).open()
        await fresh.send({"type": "turn", "id": "t3", "text": "third", "options": {"max_tokens": 1}})
        alone = await fresh.until("accepted")
        await fresh.close()
    finally:
        process.kill()
        process.wait(10)
    assert resumed["gap"] is True and resumed["last_seq"] > 1 << 20
    assert after["system"] == before["system"] == "You are durable."
    assert after["turns"][:2] == before["turns"][:2] and after["turns"][1]["text"] == first["text"]
    assert after["turns"][2]["text"] == "second" and after["turns"][3]["partial"] is True
    assert accepted["prompt_tokens"] > alone["prompt_tokens"] + 10


async def test_two_gateways_share_sessions_through_redis(demo_dirs: DemoDirs, tmp_path: Path, redis_url: str) -> None:
    """A session started on one gateway process resumes on another that shares the Redis store."""
    ports = free_port(), free_port()
    processes = [serve_process(demo_dirs.model, tmp_path / str(p), p, store=redis_url) for p in ports]
    urls = [f"ws://127.0.0.1:{p}/ws" for p in ports]
    try:
        await asyncio.gather(*(wait_ready(url, process) for url, process in zip(urls, processes)))
        one = await Raw(urls[0]).open()
        await one.send({"type": "configure", "system": "shared"})
        await one.until("configured")
        await one.send({"type": "turn", "id": "t1", "text": "hello from one", "options": {"max_tokens": 4, **GREEDY}})
        done = await one.until("done")
        await one.close()
        two = await Raw(urls[1]).open()
        await two.send({"type": "resume", "session": one.ready["session"], "token": one.ready["resume_token"], "last_seq": 3})
        resumed = await two.until("resumed")
        await two.send({"type": "history"})
        history_ = await two.until("history")
        await two.close()
    finally:
        for process in processes:
            process.kill()
            process.wait(10)
    assert resumed["session"] == one.ready["session"] and resumed["gap"] is True
    assert history_["system"] == "shared"
    assert [t["text"] for t in history_["turns"]] == ["hello from one", done["text"]]


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_store_round_trip(kind: str, redis_url: str, tmp_path: Path) -> None:
    """Both stores keep settings, history with image bytes, tool calls and results (which join the
    newest exchange after it was saved), trimming, and the pending turn."""
    from dataclasses import replace

    from gateway.core.exchange import PendingTurn
    from gateway.core.session import Exchange, ToolResult, UserTurn
    from gateway.core.store.base import SessionRecord
    from gateway.core.store.open import open_store
    from gateway.engine.contract import ToolCall
    from tests.conftest import chat_image

    store = open_store(Settings(session_store="sqlite" if kind == "sqlite" else redis_url, data_dir=str(tmp_path)))
    image = chat_image()
    called = Exchange(UserTurn("b", "two"), "r2", True, 2, tool_calls=(ToolCall("c1", "look", '{"q": 1}'),))
    exchanges = [Exchange(UserTurn("a", "one", (image,)), "r1", False, 1), called]
    answered = replace(called, tool_results=(ToolResult("c1", "found it"),))
    record = SessionRecord(id="rt", token_hash="h", owner="", system="sys", last_seq=9, updated_at=time.time())
    try:
        await store.save_meta(record)
        await store.sync_history("rt", exchanges)
        await store.sync_history("rt", [answered])  # the oldest was trimmed; the call got its result
        await store.set_pending("rt", PendingTurn(UserTurn("c", "", continues=True), answers="r1"))
        loaded = await store.load("rt")
        await store.delete("rt")
        gone = await store.load("rt")
    finally:
        await store.close()
    assert loaded is not None and gone is None
    assert loaded.system == "sys" and loaded.last_seq == 9 and loaded.exchanges == [answered]
    assert loaded.pending is not None and loaded.pending.turn.continues and loaded.pending.answers == "r1"


async def test_a_thousand_drop_and_resume_cycles_leak_nothing(durable: RunningServer) -> None:
    """1,000 times: connect, resume the same session, drop the TCP connection. No thread, task,
    descriptor, live session, store row or memory is left behind; the reconnect-to-resumed time is reported."""
    from tests.e2e.test_load import open_fds, rss_bytes

    hub = durable.app.state.ws.hub
    owner = await Raw(durable.ws_url).open()
    session, token = owner.ready["session"], owner.ready["resume_token"]
    await owner.send({"type": "turn", "id": "t", "text": "keep me", "options": {"max_tokens": 2}})
    await owner.until("done")
    owner.abort()

    async def cycle() -> float:
        started = time.perf_counter()
        client = await Raw(durable.ws_url).open()
        await client.send({"type": "resume", "session": session, "token": token, "last_seq": 10**9})
        await client.until("resumed")
        elapsed = time.perf_counter() - started
        client.abort()
        return elapsed

    for _ in range(50):  # warm up: pools, caches, allocator
        await cycle()
    await asyncio.sleep(0.5)

    async def store_rows() -> int:
        return int(await hub.store._run(lambda db: db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]))

    connections, live, rows_before = len(durable.app.state.ws.connections), len(hub.live), await store_rows()
    threads, fds, rss, tasks = threads_but_readers(), open_fds(), rss_bytes(), len(asyncio.all_tasks())
    latencies = sorted([await cycle() for _ in range(1000)])
    await wait_until(lambda: len(durable.app.state.ws.connections) <= connections and len(hub.live) <= live, timeout_s=120)
    await asyncio.sleep(0.5)
    rows = await store_rows()
    grown = rss_bytes() - rss
    p50, p99 = latencies[500] * 1000, latencies[990] * 1000
    print(f"\n[sessions] connect+resume p50 {p50:.1f} ms, p99 {p99:.1f} ms; rss growth {grown >> 20} MiB; store rows {rows}")
    assert threads_but_readers() <= threads and open_fds() <= fds + 2 and len(asyncio.all_tasks()) <= tasks + 2
    assert sum(thread.name.startswith(READER_THREADS) for thread in threading.enumerate()) <= READERS
    assert session in hub.live and len(hub.live) == live and grown < 32 << 20
    assert rows == rows_before  # the fresh sessions of the 1,000 connections left nothing behind


READER_THREADS = "gateway-store-read"


def threads_but_readers() -> int:
    """Threads, less the SQLite store's readers: a pool of at most READERS that starts a worker when reads
    overlap, which they do more often on a loaded machine (a second reader is no leak)."""
    return sum(not thread.name.startswith(READER_THREADS) for thread in threading.enumerate())


async def test_python_client_resumes_on_its_own(durable: RunningServer) -> None:
    """GatewayClient(resume=True): the connection drops mid-reply and the caller still reads one
    uninterrupted turn whose deltas add up to `done.text`."""
    from gateway.client import GatewayClient, TurnResult

    async with GatewayClient(durable.ws_url, resume=True) as client:
        result = TurnResult(id="t")
        await client.start_turn("t", "a long story", max_tokens=200, ignore_eos=True, **GREEDY)
        while len(result.deltas) < 2:
            frame = await client.recv()
            if frame["type"] == "token":
                result.deltas.append(frame["text"])
        client.ws.transport.abort()
        await client.collect("t", result)
        next_turn = await client.turn("u", "and then?", max_tokens=2)
    assert client.reconnects == 1 and result.done is not None
    assert result.text == result.done["text"] and result.done["finish_reason"] == "length"
    assert next_turn.done is not None and next_turn.accepted and next_turn.accepted["prompt_tokens"] > 20


async def test_resuming_twice_on_one_connection_keeps_both_sessions(durable: RunningServer) -> None:
    """A connection that resumed A and then resumes B only discards its own fresh session: A stays."""
    a, b = await Raw(durable.ws_url).open(), await Raw(durable.ws_url).open()
    for client in (a, b):
        await client.send({"type": "configure", "system": f"I am {client.ready['session']}"})
        await client.until("configured")
    await a.close()
    await b.close()
    switcher = await Raw(durable.ws_url).open()
    for client in (a, b):
        await switcher.send({"type": "resume", "session": client.ready["session"], "token": client.ready["resume_token"]})
        await switcher.until("resumed")
    await switcher.close()
    again = await Raw(durable.ws_url).open()
    await again.send({"type": "resume", "session": a.ready["session"], "token": a.ready["resume_token"]})
    resumed = await again.until("resumed")
    await again.send({"type": "forget"})
    forgotten = await again.until("forgotten")
    await again.close()
    assert resumed["session"] == a.ready["session"] and len(forgotten["resume_token"]) >= 22


async def test_a_failing_store_never_breaks_the_conversation(durable: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the store fails (a full disk, Redis gone), configure and turns still work in memory."""
    store = durable.app.state.ws.hub.store

    async def broken(*args: object) -> None:
        raise OSError("disk full")

    for method in ("save_meta", "sync_tree", "set_pending"):
        monkeypatch.setattr(store, method, broken)
    client = await Raw(durable.ws_url).open()
    await client.send({"type": "configure", "system": "still here"})
    configured = await client.until("configured")
    await client.send({"type": "turn", "id": "t", "text": "hello", "options": {"max_tokens": 3}})
    done = await client.until("done")
    await client.close()
    assert configured["defaults"]["system"] == "still here" and done["finish_reason"] in ("length", "stop")
