"""The hub's view of a store: every call bounded by `store_timeout_s`, and whether the store works now."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from gateway.errors import one_line

log = logging.getLogger("gateway.core.store")

P = ParamSpec("P")
T = TypeVar("T")


class StoreUnavailable(Exception):
    """The store failed, did not answer within `store_timeout_s`, or is down and already being probed."""


class StoreGuard:
    """Bounds each store call and tracks the store's health. While the store is failing, one call at a
    time probes it and every other fails at once, so a hung Redis or disk holds at most one waiter, not
    one per turn; the first call that works makes sessions durable again."""

    def __init__(self, persistent: bool, timeout_s: float, on_failure: Callable[[], None] = lambda: None) -> None:
        self.persistent = persistent
        self.timeout_s = timeout_s
        self.on_failure = on_failure  # counts each failed call (the store_failures metric)
        self.healthy = True
        self._probing = False

    @property
    def durable(self) -> bool:
        """Sessions outlive this process: the store keeps them and it works now."""
        return self.persistent and self.healthy

    async def call(self, work: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        if not self.healthy and self._probing:
            raise StoreUnavailable("the session store is unavailable")
        probe = not self.healthy
        self._probing |= probe
        try:
            result = await asyncio.wait_for(work(*args, **kwargs), self.timeout_s)
        except Exception as exc:
            self._failed(exc)
            raise StoreUnavailable(one_line(exc) or "timed out") from exc
        finally:
            if probe:
                self._probing = False
        if not self.healthy:
            log.warning("the session store answers again: sessions are durable")
            self.healthy = True
        return result

    def _failed(self, exc: Exception) -> None:
        self.on_failure()
        reason = "no answer within store_timeout_s" if isinstance(exc, TimeoutError) else one_line(exc)
        if self.healthy:
            log.warning("the session store failed (%s): sessions go on in memory, not durable", reason)
        else:
            log.debug("the session store still fails: %s", reason)
        self.healthy = False
