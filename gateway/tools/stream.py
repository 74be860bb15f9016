"""A turn's events with its tool calls taken out: text outside calls streams on, calls arrive whole before `done`."""

from __future__ import annotations

import dataclasses

from gateway.engine.contract import GenerationResult, ToolCallSink
from gateway.tools.formats import ToolFormat


class ToolCallFilter:
    """Wraps a front end's sink. From where a call opens (or may be opening), the reply's text is held back;
    when the reply ends, a clean finish whose held text parses as calls becomes `tool_calls`: each call goes
    to `on_tool_call`, then `done` with the text sent before them. Anything else releases the held text."""

    def __init__(self, sink: ToolCallSink, syntax: ToolFormat) -> None:
        self._sink = sink
        self._syntax = syntax
        self._text = ""
        self._sent = 0  # characters of _text passed on

    def on_queued(self, position: int) -> None:
        self._sink.on_queued(position)

    def on_token(self, text: str) -> None:
        self._text += text
        start = self._syntax.call_start(self._text)
        end = len(self._text) if start is None else max(start, self._sent)
        if end > self._sent:
            self._sink.on_token(self._text[self._sent : end])
            self._sent = end

    def on_done(self, result: GenerationResult) -> None:
        for call in result.tool_calls:  # calls an upstream server parsed itself
            self._sink.on_tool_call(call)
        held = result.finish_reason == "stop" and self._sent < len(self._text) and not result.tool_calls
        calls = self._syntax.parse(self._text).calls if held else ()
        if not calls:
            if self._sent < len(self._text):
                self._sink.on_token(self._text[self._sent :])
            self._sink.on_done(result)
            return
        for call in calls:
            self._sink.on_tool_call(call)
        content = self._text[: self._sent]
        self._sink.on_done(dataclasses.replace(result, text=content, finish_reason="tool_calls", tool_calls=calls))
