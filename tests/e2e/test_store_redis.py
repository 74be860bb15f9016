"""The Redis store against a real redis-server: the small record a resume is checked against, the size
bound enforced on write, and a hung server (SIGSTOP) bounded by `store_timeout_s`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from unittest import mock

import pytest

from gateway.config import Settings
from gateway.core.exchange import PendingTurn
from gateway.core.session import Exchange, UserTurn
from gateway.core.store import base
from gateway.core.store.base import SessionRecord
from gateway.core.store.guard import StoreGuard, StoreUnavailable
from gateway.core.store.redis import SIZES, RedisStore
from tests.conftest import ensure_program, free_port

# How long a store call waits in the tests that hang Redis: only a real hang (SIGSTOP) lasts that long. At
# 0.5 s an ordinary call on a loaded 2-core machine timed out now and then.
HANG_S = 5.0

MiB = 1 << 20


def record(session_id: str, updated_at: float) -> SessionRecord:
    return SessionRecord(id=session_id, token_hash=f"hash-{session_id}", owner="o", updated_at=updated_at)


def exchanges(count: int, text_bytes: int) -> list[Exchange]:
    return [Exchange(UserTurn(f"t{n}", "x" * text_bytes), "r", False, n) for n in range(1, count + 1)]


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    """A store on a database of its own on the session's redis-server, emptied first."""
    opened = RedisStore(redis_url.rsplit("/", 1)[0] + "/7", Settings(max_store_bytes=1 * MiB))
    await opened.redis.flushdb()
    yield opened
    await opened.redis.flushdb()
    await opened.close()


async def test_load_meta_is_the_small_record(store: RedisStore) -> None:
    """`load_meta` answers id, token hash, owner and last use; None for an unknown id."""
    await store.open()
    await store.save_meta(record("a", 123.0))
    await store.sync_history("a", exchanges(2, 1000))
    meta, unknown = await store.load_meta("a"), await store.load_meta("nobody")
    assert meta is not None and (meta.id, meta.token_hash, meta.owner, meta.updated_at) == ("a", "hash-a", "o", 123.0)
    assert unknown is None


async def test_writes_past_the_bound_evict_the_least_recently_used(store: RedisStore) -> None:
    """Writing eight times `max_store_bytes`: after every write the sessions' bytes are within the
    bound; the oldest went, the newest is whole."""
    totals = []
    for n in range(32):  # 32 sessions of 256 KiB: 8 MiB written
        await store.save_meta(record(f"s{n}", 1000.0 + n))
        await store.sync_history(f"s{n}", exchanges(4, 64 * 1024))
        totals.append(sum(int(v) for v in await store.redis.hvals(SIZES)))
    newest, oldest = await store.load("s31"), await store.load_meta("s0")
    assert max(totals) <= 1 * MiB
    assert oldest is None and newest is not None and len(newest.exchanges) == 4


@pytest.fixture
def own_redis(tmp_path: Path, pytestconfig: pytest.Config) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own, which it may stop and continue."""
    port = free_port()
    program = ensure_program("redis-server", "redis-server", pytestconfig)
    args = [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not answers(port):
        assert time.monotonic() < deadline and process.poll() is None, "redis-server did not start"
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0", process
    os.kill(process.pid, signal.SIGCONT)
    process.terminate()
    process.wait(10)


async def test_a_stopped_redis_is_bounded_by_the_timeout(own_redis: tuple[str, subprocess.Popen[bytes]]) -> None:
    """SIGSTOP: a call fails with StoreUnavailable once `store_timeout_s` is up, while the one probe
    waits every other call fails at once, and after SIGCONT the store is healthy again."""
    url, process = own_redis
    store = RedisStore(url, Settings(store_timeout_s=HANG_S))
    guard = StoreGuard(store.persistent, HANG_S)
    try:
        await store.open()
        await guard.call(store.save_meta, record("a", time.time()))
        os.kill(process.pid, signal.SIGSTOP)
        with pytest.raises(StoreUnavailable):
            await guard.call(store.load_meta, "a")
        probe = asyncio.ensure_future(guard.call(store.load_meta, "a"))
        await asyncio.sleep(0)  # the probe is waiting on the stopped server
        with pytest.raises(StoreUnavailable):
            await guard.call(store.load_meta, "a")  # no second waiter: it fails before reaching Redis
        with pytest.raises(StoreUnavailable):
            await probe
        durable_while_stopped = guard.durable
        os.kill(process.pid, signal.SIGCONT)
        meta = await retry(guard, store)
    finally:
        os.kill(process.pid, signal.SIGCONT)
        await store.close()
    assert durable_while_stopped is False and guard.durable and meta is not None


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


async def retry(guard: StoreGuard, store: RedisStore) -> object:
    """The first calls after SIGCONT may still meet the connection the timeout broke: retried until a limit
    only a hang reaches (a loaded machine may take seconds to run redis-server again)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await guard.call(store.load_meta, "a")
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_a_claim_holds_on_every_client_of_the_server(store: RedisStore, redis_url: str) -> None:
    """A key claimed through one store (one gateway) is refused through another on the same Redis,
    and expires by itself (SET NX PX)."""
    other = RedisStore(redis_url.rsplit("/", 1)[0] + "/7", Settings())
    try:
        now = time.time()
        assert await store.claim("token-1", now, now + 60) is True
        assert await other.claim("token-1", now, now + 60) is False
        assert await other.claim("token-2", now, now + 60) is True
        # a claim that lives 0.3 s: taken again once more than that has passed (a slow machine only waits longer)
        assert await store.claim("token-3", now, now + 0.3) is True
        await asyncio.sleep(0.4)
        assert await other.claim("token-3", time.time(), time.time() + 60) is True
    finally:
        await other.close()


async def test_a_pending_turn_is_encoded_off_the_event_loop(store: RedisStore) -> None:
    """`set_pending` copies a turn's images into its record off the event loop's thread, and stores it."""
    encoding: list[threading.Thread] = []
    encode = base.encode_pending

    def watched(pending: PendingTurn) -> bytes:
        encoding.append(threading.current_thread())
        return encode(pending)

    await store.open()
    await store.save_meta(record("a", 123.0))
    with mock.patch.object(base, "encode_pending", watched):
        await store.set_pending("a", PendingTurn(UserTurn("t1", "look")))
    loaded = await store.load("a")
    assert encoding and encoding[0] is not threading.current_thread()
    assert loaded is not None and loaded.pending is not None and loaded.pending.turn.id == "t1"
