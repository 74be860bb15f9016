"""A session turn's events rendered as WebSocket frames, into the session's journal (a turn outlives its socket)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.core.events import Accepted, Delta, Ended, Queued, ToolCalled, TurnEvent
from gateway.core.turn_types import StartedTurn
from gateway.engine.contract import GenerationResult
from gateway.errors import ErrorCode
from gateway.ws import protocol as p
from gateway.ws.live_session import LiveSession


def frames_of(turn_id: str, event: TurnEvent, initiated: str | None = None) -> list[p.SessionFrame]:
    """One frame per event, and an `error` before a failed turn's `done`."""
    if isinstance(event, Accepted):
        live = event.live_frames
        info = p.LiveFramesInfo(live.count, live.first_ts, live.last_ts, live.merged, live.still) if live is not None else None
        tokens, dropped = event.prompt_tokens, event.dropped_turns
        return [
            p.AcceptedFrame(
                id=turn_id,
                prompt_tokens=tokens,
                dropped_turns=dropped,
                live_frames=info,
                initiated=initiated,
                item_id=event.item_id,
                reply_id=event.reply_id,
            )
        ]
    if isinstance(event, Queued):
        return [p.QueuedFrame(id=turn_id, position=event.position)]
    if isinstance(event, Delta):
        return [p.TokenFrame(id=turn_id, text=event.text)]
    if isinstance(event, ToolCalled):
        return [p.ToolCallFrame(id=turn_id, call_id=c.id, name=c.name, arguments=c.arguments) for c in event.calls]
    result = event.result
    frames: list[p.SessionFrame] = []
    if result.finish_reason == "error":
        code = result.error_code or ErrorCode.GENERATION
        message = result.error or "generation failed"
        frames.append(p.ErrorFrame(code=code.value, message=message, id=turn_id, retry_after_ms=result.retry_after_ms))
    frames.append(done_frame(turn_id, result, initiated, event.reply_id))
    return frames


def done_frame(turn_id: str, result: GenerationResult, initiated: str | None = None, reply_id: str | None = None) -> p.DoneFrame:
    return p.DoneFrame(
        id=turn_id,
        finish_reason=result.finish_reason,
        text=result.text,
        usage=p.Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
            cached_tokens=result.cached_tokens,
        ),
        timing=p.Timing(
            ttft_ms=None if result.ttft_ms is None else round(result.ttft_ms, 2),
            total_ms=round(result.total_ms, 2),
            tokens_per_s=round(result.tokens_per_s, 2),
        ),
        structured=result.structured,
        initiated=initiated,
        reply_id=reply_id,
    )


class TurnFrames:
    """Listens to one turn of a live session: its frames go to the session, and after `done` the session has no
    running turn. `started` is set once the turn service returns it; every `Ended` comes after that."""

    def __init__(
        self, emit: Callable[[LiveSession, p.SessionFrame], None], live: LiveSession, turn_id: str, initiated: str | None = None
    ) -> None:
        self._emit = emit
        self._live = live
        self._turn_id = turn_id
        self._initiated = initiated
        self.started: StartedTurn | None = None
        self.ended = asyncio.Event()  # set once `done` is out and the session has no running turn

    def __call__(self, event: TurnEvent) -> None:
        if type(event) is Delta:  # nearly every event: one frame, no list (the WebSocket layer's hot path)
            self._emit(self._live, p.TokenFrame(id=self._turn_id, text=event.text))
            return
        for frame in frames_of(self._turn_id, event, self._initiated):
            self._emit(self._live, frame)
        if isinstance(event, Ended):
            if self._live.active is self.started:
                self._live.active = None
            self.ended.set()
