"""A session's watch: the server asks about a live window every few seconds while new frames arrive, yielding to the client."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.core.live_view import LiveView
from gateway.core.request import SamplingOptions, TurnRequest
from gateway.errors import GatewayError
from gateway.ws.live_session import LiveSession

WATCH = "watch"  # what `accepted` and `done` of a watch's turns say in `initiated`
log = logging.getLogger("gateway.ws.watch")


@dataclass(frozen=True)
class WatchSpec:
    source: str
    every_s: float
    text: str
    max_tokens: int | None


# Starts a watch turn and hands back the event set at its end; None while the session runs another turn.
StartTurn = Callable[[TurnRequest], Awaitable["asyncio.Event | None"]]
Refuse = Callable[[str, GatewayError], None]
# When the next watch turn is due (monotonic seconds), so it is warmed up ahead; None once the watch has stopped.
Announce = Callable[[float | None], None]


def stop_watch(live: LiveSession) -> bool:
    """End the session's watch, if any (a watch turn already running goes on to its `done`)."""
    watcher, live.watcher = live.watcher, None
    if watcher is not None:
        watcher.cancel()
    return watcher is not None


def _settle(starting: asyncio.Future[asyncio.Event | None]) -> None:
    """A start that finished after its watch ended: its refusal has no one left to tell."""
    if not starting.cancelled() and starting.exception() is not None:
        log.info("a watch turn was refused after its watch ended: %s", starting.exception())


async def watch_loop(live: LiveSession, spec: WatchSpec, start: StartTurn, refuse: Refuse, announce: Announce) -> None:
    """Every `every_s`, a live turn over the window, when it holds a distinct frame the last watch turn did not
    read and no turn of the session runs (then it tries again at the next tick); one watch turn at a time. Each
    tick is `announce`d as it is set, so the turn it may start is prefilled ahead (core/warm_ups.py), and the last
    one withdrawn when the watch ends."""
    try:
        await _watch(live, spec, start, refuse, announce)
    finally:
        announce(None)


async def _watch(live: LiveSession, spec: WatchSpec, start: StartTurn, refuse: Refuse, announce: Announce) -> None:
    read: int | None = None  # the window version the last watch turn read
    number = 0
    options = SamplingOptions(max_tokens=spec.max_tokens) if spec.max_tokens is not None else None
    while True:
        announce(time.monotonic() + spec.every_s)
        await asyncio.sleep(spec.every_s)
        window = live.windows.get(spec.source) if live.windows is not None else None
        snapshot = window.snapshot() if window is not None else None
        if snapshot is None or snapshot.version == read:
            continue  # nothing changed: a still scene costs no turn
        request = TurnRequest(id=f"watch-{number + 1}", text=spec.text, options=options, live=LiveView(spec.source, snapshot))
        starting = asyncio.ensure_future(start(request))
        try:
            # Shielded: an `unwatch` that lands while the turn starts must not cut the start in half, or the turn
            # would run without the session knowing it is the watch's (and a client's turn would then be `busy`).
            ended = await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(_settle)
            raise
        except GatewayError as exc:  # full, draining, over a bound: said to the client; the watch goes on
            refuse(request.id, exc)
            read, number = snapshot.version, number + 1
            continue
        except Exception:
            log.exception("a watch turn could not start; the watch ends")
            return
        if ended is not None:
            read, number = snapshot.version, number + 1
            await ended.wait()
