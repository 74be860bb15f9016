"""Cheap refusals and store faults on a real server: a wrong token reads no history, one session's
hung store write holds no other session's `done`, a failing or stopped store answers `store_unavailable`
while turns go on, and a store that cannot open stops `gateway serve` with one line."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.config import Settings
from gateway.core.store.open import SQLITE_FILE
from tests.conftest import DemoDirs, RunningServer, free_port, start_server, wait_until
from tests.e2e.test_sessions import Raw, live_session
from tests.e2e.test_store_redis import HANG_S, own_redis  # noqa: F401  (a fixture)

TURN = {"max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def quick(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    """Sessions leave memory soon after their socket; a store call waits HANG_S at most (only a real hang
    lasts that long: at 0.5 s an ordinary write on a loaded machine timed out, and sessions were not durable)."""
    settings = Settings(session_grace_s=0.2, store_timeout_s=HANG_S, turns_per_minute=1e6, frames_per_second=1e6)
    running = start_server(demo_dirs.model, settings)
    yield running
    running.stop()


def count_calls(store: Any, monkeypatch: pytest.MonkeyPatch, *names: str) -> Counter[str]:
    calls: Counter[str] = Counter()
    for name in names:
        original = getattr(store, name)

        async def counted(*args: Any, _name: str = name, _original: Any = original) -> Any:
            calls[_name] += 1
            return await _original(*args)

        monkeypatch.setattr(store, name, counted)
    return calls


async def stored_session(server: RunningServer) -> tuple[str, str]:
    """A session with one exchange, saved, its socket gone and it out of memory."""
    client = await Raw(server.ws_url).open()
    await client.send({"type": "turn", "id": "t", "text": "remember this", "options": TURN})
    await client.until("done")
    await client.close()
    session = client.ready["session"]
    await wait_until(lambda: live_session(server, session) is None)
    return session, client.ready["resume_token"]


async def test_a_wrong_token_never_reads_the_history(quick: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong tokens for a stored and for a live session, and an unknown id, each cost one small-record
    lookup and no history read; only the right token loads the history."""
    stored, token = await stored_session(quick)
    holder = await Raw(quick.ws_url).open()
    calls = count_calls(quick.app.state.ws.hub.store, monkeypatch, "load_meta", "load")
    client = await Raw(quick.ws_url).open()
    answers = []
    for session in (stored, holder.ready["session"], "no-such-session"):
        await client.send({"type": "resume", "session": session, "token": "x" * 32})
        answers.append((await client.until("error"))["code"])
    refused = dict(calls)
    await client.send({"type": "resume", "session": stored, "token": token})
    await client.until("resumed")
    await client.close()
    await holder.close()
    assert answers == ["resume_failed"] * 3 and refused == {"load_meta": 3}
    assert calls == {"load_meta": 4, "load": 1}


async def test_a_hung_store_write_holds_no_other_sessions_done(quick: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Session A's history write hangs the store's writer thread: A's and B's `done` both arrive while
    it is still hung (each waited store_timeout_s at most), sessions are reported not durable, and once
    the store answers again a save makes them durable again."""
    store, hub = quick.app.state.ws.hub.store, quick.app.state.ws.hub
    a, b = await Raw(quick.ws_url).open(), await Raw(quick.ws_url).open()
    hung, release = threading.Event(), threading.Event()
    sync_tree = store.sync_tree

    def hang(db: sqlite3.Connection) -> None:
        hung.set()
        release.wait(60)

    async def hanging_for_a(session_id: str, change: Any) -> None:
        if session_id == a.ready["session"]:
            await store._run(hang)
        await sync_tree(session_id, change)

    monkeypatch.setattr(store, "sync_tree", hanging_for_a)
    try:
        await a.send({"type": "turn", "id": "ta", "text": "first", "options": TURN})
        await asyncio.to_thread(hung.wait, 30)
        await b.send({"type": "turn", "id": "tb", "text": "second", "options": TURN})
        done_b = await b.until("done", timeout_s=30)
        done_a = await a.until("done", timeout_s=30)
        still_hung = not release.is_set()
        meanwhile = await Raw(quick.ws_url).open()
        durable_while_hung = meanwhile.ready["durable"]
        await meanwhile.close()
    finally:
        release.set()
    await b.send({"type": "turn", "id": "tb2", "text": "third", "options": TURN})
    await b.until("done")
    await wait_until(lambda: hub.guard.durable)
    later = await Raw(quick.ws_url).open()
    await a.close()
    await b.close()
    await later.close()
    assert still_hung and done_a["id"] == "ta" and done_b["id"] == "tb"
    assert durable_while_hung is False and later.ready["durable"] is True


async def test_a_failing_store_answers_store_unavailable(quick: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """While every store call fails: turns go on, `resume` and `forget` answer `store_unavailable` on a
    connection that stays open, and `ready` and /status say sessions are not durable; then it heals."""
    stored, token = await stored_session(quick)
    store, hub = quick.app.state.ws.hub.store, quick.app.state.ws.hub

    async def broken(*args: object) -> None:
        raise OSError("disk I/O error")

    with monkeypatch.context() as patched:
        for method in ("load_meta", "load", "save_meta", "sync_tree", "set_pending", "delete"):
            patched.setattr(store, method, broken)
        client = await Raw(quick.ws_url).open()
        await client.send({"type": "resume", "session": stored, "token": token, "id": "r"})
        resume = await client.until("error")
        await client.send({"type": "turn", "id": "t", "text": "hello", "options": TURN})
        done = await client.until("done")
        await client.send({"type": "forget", "id": "f"})
        forget = await client.until("error")
        await client.send({"type": "ping", "id": "p"})
        pong = await client.until("pong")
        fresh = await Raw(quick.ws_url).open()
        status = requests.get(f"{quick.http_url}/status", timeout=10).json()
    await client.send({"type": "turn", "id": "t2", "text": "again", "options": TURN})
    await client.until("done")
    await wait_until(lambda: hub.guard.durable)
    healed = await Raw(quick.ws_url).open()
    await healed.send({"type": "resume", "session": stored, "token": token})
    resumed = await healed.until("resumed")
    for each in (client, fresh, healed):
        await each.close()
    assert done["finish_reason"] in ("length", "stop") and pong["id"] == "p"
    assert resume["code"] == forget["code"] == "store_unavailable" and forget["id"] == "f"
    assert fresh.ready["durable"] is False and status["durable"] is False
    assert healed.ready["durable"] is True and resumed["session"] == stored


async def test_a_stopped_redis_holds_no_done(
    demo_dirs: DemoDirs,
    own_redis: tuple[str, subprocess.Popen[bytes]],  # noqa: F811
) -> None:
    """Redis hung by SIGSTOP: a turn's `done` still arrives, `resume` answers `store_unavailable`, new
    connections hear sessions are not durable; after SIGCONT they are durable again."""
    url, redis = own_redis
    running = start_server(demo_dirs.model, Settings(session_store=url, store_timeout_s=HANG_S))
    try:
        client = await Raw(running.ws_url).open()
        await client.send({"type": "turn", "id": "t1", "text": "before", "options": TURN})
        await client.until("done")
        os.kill(redis.pid, signal.SIGSTOP)
        await client.send({"type": "turn", "id": "t2", "text": "while stopped", "options": TURN})
        done = await client.until("done", timeout_s=30)
        other = await Raw(running.ws_url).open()
        await other.send({"type": "resume", "session": "somebody-else", "token": "x" * 32})
        refused = await other.until("error", timeout_s=30)
        os.kill(redis.pid, signal.SIGCONT)
        for n in range(50):  # saves until one works: the connections the timeouts broke are replaced
            if running.app.state.ws.hub.guard.durable:
                break
            await client.send({"type": "turn", "id": f"t{n + 3}", "text": "after", "options": TURN})
            await client.until("done")
        again = await Raw(running.ws_url).open()
        for each in (client, other, again):
            await each.close()
    finally:
        os.kill(redis.pid, signal.SIGCONT)
        running.stop()
    assert done["id"] == "t2" and refused["code"] == "store_unavailable"
    assert other.ready["durable"] is False and again.ready["durable"] is True


# ---- a store that cannot open at start -----------------------------------------------------------


def serve(data_dir: Path, *flags: str, store: str = "sqlite", read_only: bool = False) -> subprocess.Popen[bytes]:
    """`gateway serve` with the scripted engine (the store is what is tried here)."""
    env = dict(os.environ, GATEWAY_ENGINE="scripted", GATEWAY_DATA_DIR=str(data_dir), GATEWAY_SESSION_STORE=store)
    env.update(GATEWAY_PORT=str(free_port()), GATEWAY_LOG_LEVEL="warning", GATEWAY_STORE_TIMEOUT_S="1")
    command = [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main(sys.argv[1:]))", "serve", *flags]
    if read_only:  # root ignores permissions: a read-only bind mount of the directory, in a mount namespace of its own
        mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        command = ["unshare", "-m", "sh", "-c", mount, str(data_dir), *command] if os.geteuid() == 0 else command
        data_dir.chmod(0o555)
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def refusal(process: subprocess.Popen[bytes]) -> tuple[int, list[str]]:
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr.decode().strip().splitlines()


def existing_store(directory: Path) -> Path:
    """A data directory holding a store made by an earlier run."""
    db = sqlite3.connect(directory / SQLITE_FILE)
    db.execute("CREATE TABLE made_before (x)")
    db.close()
    return directory


@pytest.mark.parametrize("fault", ["corrupt file", "read-only directory", "redis down"])
def test_a_store_that_cannot_open_stops_serve_with_one_line(fault: str, tmp_path: Path) -> None:
    """A corrupt SQLite file, a read-only data directory or an unreachable Redis: `gateway serve`
    exits non-zero, saying why in one line that names the way out."""
    if fault == "corrupt file":
        (tmp_path / SQLITE_FILE).write_bytes(b"not a database at all" * 200)
        process = serve(tmp_path)
    elif fault == "read-only directory":
        process = serve(existing_store(tmp_path), read_only=True)
    else:
        process = serve(tmp_path, store=f"redis://127.0.0.1:{free_port()}/0")
    code, lines = refusal(process)
    tmp_path.chmod(0o755)
    assert code != 0 and len(lines) == 1, lines
    assert lines[0].startswith("gateway serve: cannot open the session store") and "--allow-volatile-sessions" in lines[0]


def test_allow_volatile_sessions_serves_and_says_not_durable(tmp_path: Path) -> None:
    """With --allow-volatile-sessions a corrupt store does not stop serve; /status says not durable."""
    (tmp_path / SQLITE_FILE).write_bytes(b"not a database at all" * 200)
    port = free_port()
    env = dict(os.environ, GATEWAY_ENGINE="scripted", GATEWAY_DATA_DIR=str(tmp_path), GATEWAY_PORT=str(port))
    command = [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main(sys.argv[1:]))"]
    process = subprocess.Popen([*command, "serve", "--allow-volatile-sessions"], env=env, stderr=subprocess.DEVNULL)
    try:
        status = wait_for_status(f"http://127.0.0.1:{port}/status", process)
    finally:
        process.terminate()
        process.wait(30)
    assert status["state"] == "ready" and status["durable"] is False


def wait_for_status(url: str, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    for _ in range(600):
        assert process.poll() is None, "the server exited"
        try:
            body: dict[str, Any] = requests.get(url, timeout=1).json()
            if body["durable"] is not None:
                return body
        except (requests.ConnectionError, requests.Timeout):  # not up yet, or slow to answer on a loaded machine
            pass
        threading.Event().wait(0.1)
    raise AssertionError("the server did not come up")
