"""A watch on a server's event loop: the CPU time each callback takes on the loop's thread, for attack tests."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

LIMIT_MS = 50.0  # the most CPU one callback may take: beyond it every other client waits that long


@dataclass
class LoopWatch:
    """Every callback the watched thread's loop runs, timed by `time.thread_time()`: CPU time of that
    thread only, so a callback preempted on a loaded machine (or waiting for the GIL) is not blamed."""

    thread: threading.Thread
    limit_ms: float = LIMIT_MS
    callbacks: int = 0
    cpu_ms: float = 0.0  # all callbacks together
    slowest_ms: float = 0.0
    slow: list[tuple[float, str]] = field(default_factory=list)  # (CPU ms, the callback) past the limit

    def observe(self, cpu_ms: float, callback: Any) -> None:
        self.callbacks += 1
        self.cpu_ms += cpu_ms
        self.slowest_ms = max(self.slowest_ms, cpu_ms)
        if cpu_ms > self.limit_ms:
            self.slow.append((cpu_ms, describe(callback)))

    def check(self) -> None:
        """Fail naming each callback that took more than the limit."""
        assert self.callbacks > 0, "the watched loop ran no callbacks: is it the server's thread?"
        lines = "\n".join(f"  {ms:.0f} ms CPU: {what}" for ms, what in sorted(self.slow, reverse=True)[:10])
        assert not self.slow, f"{len(self.slow)} event-loop callbacks over {self.limit_ms:.0f} ms CPU:\n{lines}"


def describe(callback: Any) -> str:
    """The callback, and for a task's step the coroutine it was running."""
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        return f"task {task.get_name()} running {task.get_coro()!r}"[:300]
    return repr(callback)[:300]


@contextlib.contextmanager
def watching(thread: threading.Thread, limit_ms: float = LIMIT_MS) -> Iterator[LoopWatch]:
    """Time every callback run by `thread`'s event loop while the block runs; the block checks the result
    (`watch.check()`) so it may assert on the rest first. Callbacks of other threads' loops (the test's
    own clients) run untimed."""
    watch = LoopWatch(thread, limit_ms)
    original: Callable[[asyncio.Handle], None] = asyncio.events.Handle._run

    def timed_run(handle: asyncio.Handle) -> None:
        if threading.current_thread() is not watch.thread:
            return original(handle)
        callback = handle._callback  # type: ignore[attr-defined]  # read first: running may clear it
        began = time.thread_time()
        try:
            return original(handle)
        finally:
            watch.observe((time.thread_time() - began) * 1000, callback)

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
    # A full garbage collection of the test process's heap (torch, transformers, every test's leftovers) can
    # take more than the limit inside whichever callback triggers it: that is not the callback's work.
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield watch
    finally:
        asyncio.events.Handle._run = original  # type: ignore[method-assign]
        if collecting:
            gc.enable()
