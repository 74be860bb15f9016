"""The engine's sink protocol turned into the turn service's typed events, and its view of every turn's end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.core.events import Delta, Listener, Queued, ToolCalled
from gateway.core.tracing import NO_TRACE, TurnTrace
from gateway.engine.contract import GenerationResult, ToolCall, TurnSink


@dataclass
class EventSink:
    """The innermost sink (behind the tool-call filter): each engine callback becomes one event; the end goes
    to `end`, which owns what follows (recording, the store, `Ended`)."""

    listener: Listener
    end: Callable[[GenerationResult], None]

    def on_queued(self, position: int) -> None:
        self.listener(Queued(position))

    def on_token(self, text: str) -> None:
        self.listener(Delta(text))

    def on_tool_call(self, call: ToolCall) -> None:
        self.listener(ToolCalled((call,)))

    def on_done(self, result: GenerationResult) -> None:
        self.end(result)


@dataclass
class Observed:
    """The outermost sink: the service sees every turn's raw end first (metrics, in-flight count, timing, the
    trace's engine phases; with tools, parsing the reply is a phase of its own)."""

    sink: TurnSink
    ended: Callable[[GenerationResult], None]
    trace: TurnTrace = NO_TRACE
    parses_tools: bool = False

    def on_queued(self, position: int) -> None:
        self.sink.on_queued(position)

    def on_token(self, text: str) -> None:
        self.sink.on_token(text)

    def on_done(self, result: GenerationResult) -> None:
        self.ended(result)
        self.trace.engine_done(result)
        if self.parses_tools:
            self.trace.phase("tool_parsing")
        self.sink.on_done(result)
