"""A turn's typed events rendered as WebSocket frames, with no server: one frame per event, an `error`
before a failed turn's `done`, and `done`'s usage and timing."""

from __future__ import annotations

from gateway.core.events import Accepted, Delta, Ended, Queued, ToolCalled
from gateway.engine.contract import GenerationResult, ToolCall
from gateway.errors import ErrorCode
from gateway.ws import protocol as p
from gateway.ws.turn_frames import done_frame, frames_of


def test_each_event_is_one_frame_of_its_turn() -> None:
    """accepted, queued and token frames carry the turn's id and the event's fields."""
    assert frames_of("t1", Accepted(12, 1)) == [p.AcceptedFrame(id="t1", prompt_tokens=12, dropped_turns=1)]
    assert frames_of("t1", Queued(2)) == [p.QueuedFrame(id="t1", position=2)]
    assert frames_of("t1", Delta("hi")) == [p.TokenFrame(id="t1", text="hi")]


def test_each_tool_call_is_a_frame_of_its_own() -> None:
    """Calls that arrive together still go out one `tool_call` frame each, in order."""
    frames = frames_of("t1", ToolCalled((ToolCall("c1", "f", "{}"), ToolCall("c2", "g", "{}"))))
    assert [(f.call_id, f.name) for f in frames if isinstance(f, p.ToolCallFrame)] == [("c1", "f"), ("c2", "g")]


def test_a_failed_turn_sends_its_error_then_done() -> None:
    """A failed turn: an `error` frame with its stable code and retry hint, then `done`."""
    result = GenerationResult(
        "error", "", (), 3, None, 1.0, 0.0, error="busy", error_code=ErrorCode.OVERLOADED, retry_after_ms=50
    )
    error, done = frames_of("t1", Ended(result))
    assert isinstance(error, p.ErrorFrame) and (error.code, error.id, error.retry_after_ms) == ("overloaded", "t1", 50)
    assert isinstance(done, p.DoneFrame) and done.finish_reason == "error"


def test_a_turn_that_ended_well_sends_only_done() -> None:
    """No `error` frame for a turn that stopped, hit its length or was cancelled."""
    assert [type(f) for f in frames_of("t1", Ended(GenerationResult("length", "a", (1,), 3, 1.0, 2.0, 3.0)))] == [p.DoneFrame]


def test_done_carries_usage_and_rounded_timing() -> None:
    """`done` totals the tokens, keeps cached tokens, and rounds timings to hundredths."""
    result = GenerationResult("stop", "hi", (1, 2), 5, 1.23456, 9.87654, 3.33333, cached_tokens=2)
    done = done_frame("t1", result)
    assert (done.usage.total_tokens, done.usage.cached_tokens) == (7, 2)
    assert (done.timing.ttft_ms, done.timing.total_ms, done.timing.tokens_per_s) == (1.23, 9.88, 3.33)


def test_done_of_a_turn_without_tokens_has_no_ttft() -> None:
    """A turn that produced no token reports ttft_ms as null, not zero."""
    assert done_frame("t1", GenerationResult("cancelled", "", (), 5, None, 1.0, 0.0)).timing.ttft_ms is None
