"""The event relay: events reach their loop in order, one wake-up per batch, with a bounded backlog."""

from __future__ import annotations

import asyncio
import threading
import time

from gateway.engine.local.relay import EventRelay


async def test_events_arrive_in_order_from_another_thread() -> None:
    """Events staged and flushed on a worker thread run on the loop, in order."""
    loop = asyncio.get_running_loop()
    relay = EventRelay()
    seen: list[int] = []
    done = asyncio.Event()

    def work() -> None:
        for i in range(1000):
            relay.emit(loop, seen.append, i)
            if i % 7 == 0:
                relay.flush()
        relay.emit(loop, done.set)
        relay.flush()

    thread = threading.Thread(target=work)
    thread.start()
    await asyncio.wait_for(done.wait(), 10)
    thread.join()
    assert seen == list(range(1000))


async def test_backlog_bound_makes_the_producer_wait() -> None:
    """Past max_backlog undelivered events, flush blocks until the loop drains them."""
    loop = asyncio.get_running_loop()
    relay = EventRelay(max_backlog=10)
    released = threading.Event()

    def work() -> None:
        for _ in range(20):
            relay.emit(loop, lambda: None)
        relay.flush(timeout_s=10)
        released.set()

    thread = threading.Thread(target=work)
    thread.start()
    time.sleep(0.3)  # hold the loop: nothing can drain, so the producer must still be waiting
    assert not released.is_set()
    await asyncio.to_thread(released.wait, 5)  # the loop is free again and drains
    thread.join()
    assert released.is_set()
