"""A session's live windows on the WebSocket: frames into them (rate-limited, merged, never stored), live turns read from them."""

from __future__ import annotations

import time

from gateway.config import Settings
from gateway.core.live_view import LiveView
from gateway.core.live_window import LiveLimits, LiveWindows, Outcome
from gateway.core.turns import TurnService
from gateway.errors import ErrorCode, GatewayError
from gateway.ws import protocol as p
from gateway.ws.live_session import LiveSession
from gateway.ws.states import LiveState


def windows_of(live: LiveSession, settings: Settings) -> LiveWindows:
    """The session's windows, opened with its first frame (a session that streams nothing holds none)."""
    if live.windows is None:
        limits = LiveLimits(
            max_frames=settings.live_window_frames,
            max_bytes=settings.live_window_bytes,
            frames_per_second=settings.max_frames_per_second,
            merge_distance=settings.live_merge_distance,
        )
        live.windows = LiveWindows(limits, settings.max_live_sources)
    return live.windows


async def add_frame(live: LiveSession, frame: p.LiveImageFrame, turns: TurnService) -> None:
    """Admit the frame at the rate (dropped and counted past it, before any decoding), check and hash it on the
    decode pool, then merge it into its window or append it there."""
    turns.check_images(1, "image")
    now_s = time.monotonic()
    windows = windows_of(live, turns.settings)
    window = windows.window(frame.source, now_s)
    counters = turns.metrics.live_frames
    if not window.admit(now_s):
        counters.dropped.inc()
        return
    try:
        image, thumb = await turns.attachments.check_live_frame(frame.image)
    except BaseException:
        window.release()
        if not len(window):  # a source whose first frames were all refused takes no place among max_live_sources
            windows.close(frame.source)
        raise
    outcome = window.add(image, thumb, frame.ts)
    (counters.accepted if outcome is Outcome.ACCEPTED else counters.merged).inc()
    if outcome is Outcome.ACCEPTED and window.read:  # the next live turn will read it: process it now
        turns.frames_ahead.start(image)
        idle = live.active is None and not live.starting.locked()  # no turn of its own running or starting
        if idle and turns.warm_ups.due(live.session, window.unread):
            snapshot = window.snapshot()  # as the next live turn will read it; frames come unread from here on
            if snapshot is not None:
                turns.warm_ups.start(live.session, LiveView(frame.source, snapshot))


def unread_view(live: LiveSession, source: str, frames: int) -> LiveView | None:
    """The source's window as the session's next live turn would read it, for a warm-up ahead of that turn
    (core/warm_ups.py: `WarmUps.expect`): None while a turn of the session's own runs or starts, while no connection
    streams it (or it has gone), or while the window holds fewer than `frames` distinct frames no live turn has read."""
    if live.active is not None or live.starting.locked() or live.state is not LiveState.ATTACHED or live.windows is None:
        return None
    window = live.windows.get(source)
    if window is None or window.unread < frames:
        return None
    snapshot = window.snapshot()  # frames come unread from here on, as after a live turn
    return LiveView(source, snapshot) if snapshot is not None else None


def live_view(live: LiveSession, spec: bool | p.LiveSpec) -> LiveView | None:
    """What a turn's `live` field asks for: None when false; else the named source's latest frames (with no
    source named, the session's one source), or `not_found` while that window holds none."""
    if spec is False:
        return None
    source = spec.source if isinstance(spec, p.LiveSpec) else None
    count = spec.frames if isinstance(spec, p.LiveSpec) else None
    sources = list(live.windows or ())
    if source is None:
        if len(sources) != 1:
            message = "name the live source" if sources else "no live frames yet; send `frame` first"
            raise GatewayError(ErrorCode.NOT_FOUND, f"{message} (streaming: {', '.join(sources) or 'nothing'})", field="live")
        source = sources[0]
    window = live.windows.get(source) if live.windows is not None else None
    snapshot = window.snapshot(count) if window is not None else None
    if snapshot is None:
        raise GatewayError(ErrorCode.NOT_FOUND, f"no live frames from {source!r}", field="live")
    return LiveView(source, snapshot)


async def yield_watch(live: LiveSession) -> None:
    """The client's turn comes first: a watch turn running is cancelled, and its end (`done`, `cancelled`) awaited."""
    watched = live.watched
    if watched is not None and live.active is watched[0]:
        watched[0].handle.cancel()
        await watched[1].wait()
