"""The store guard on its own: calls bounded by the timeout, one probe while the store is down, and
durability following the last call."""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.store.guard import StoreGuard, StoreUnavailable


async def answer(value: int) -> int:
    return value


async def fail() -> int:
    raise OSError("disk I/O error")


async def test_a_call_that_hangs_is_cut_at_the_timeout() -> None:
    """A store call that never answers raises StoreUnavailable and marks sessions not durable."""
    guard = StoreGuard(persistent=True, timeout_s=0.05)
    never = asyncio.Event()
    with pytest.raises(StoreUnavailable):
        await guard.call(never.wait)
    assert guard.durable is False


async def test_while_down_one_probe_waits_and_the_others_fail_at_once() -> None:
    """After a failure, the next call probes the store; calls made while it waits fail without
    reaching the store, and the probe's success makes sessions durable again."""
    guard = StoreGuard(persistent=True, timeout_s=5)
    with pytest.raises(StoreUnavailable):
        await guard.call(fail)
    release, reached = asyncio.Event(), []

    async def slow() -> int:
        await release.wait()
        return 1

    async def counted() -> int:
        reached.append(1)
        return 2

    probe = asyncio.ensure_future(guard.call(slow))
    await asyncio.sleep(0)
    with pytest.raises(StoreUnavailable):
        await guard.call(counted)
    release.set()
    assert await probe == 1 and reached == [] and guard.durable
    assert await guard.call(answer, 3) == 3


async def test_the_memory_store_is_never_durable() -> None:
    """A store that keeps nothing past the process is not durable, even when every call works."""
    guard = StoreGuard(persistent=False, timeout_s=1)
    assert await guard.call(answer, 1) == 1 and guard.durable is False


async def test_each_failed_call_is_counted() -> None:
    """`on_failure` (the store_failures metric) hears of every failed or timed-out call, and of no call that worked."""
    failures: list[None] = []
    guard = StoreGuard(persistent=True, timeout_s=0.05, on_failure=lambda: failures.append(None))
    assert await guard.call(answer, 1) == 1
    for _ in range(2):
        with pytest.raises(StoreUnavailable):
            await guard.call(fail)
    assert len(failures) == 2
