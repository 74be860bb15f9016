"""Pure: a streamed chat completion's bytes in, its events out (server-sent events carrying OpenAI chunks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec


@dataclass(frozen=True)
class StreamEvent:
    """One chunk, reduced to what a turn needs."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    error_status: int | None = None  # the HTTP status an error chunk names, when it names one
    tool_calls: tuple[dict[str, Any], ...] = ()  # tool-call deltas, as the upstream parsed them


# Typed structs: msgspec decodes only these fields and skips the rest of each chunk unread, several
# times faster than json.loads into dicts; this runs once per token per stream.
class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: Any = None  # OpenAI's {"error": {"message", "code", ...}}
    object: str | None = None  # vLLM's own error chunk: {"object": "error", "message", "code"}
    message: str | None = None
    code: Any = None


_decoder = msgspec.json.Decoder(_Chunk)


def parse_sse_line(line: bytes | str) -> StreamEvent | None:
    """A `data:` line's chunk; None for blank lines, comments, other fields and the final `[DONE]`."""
    raw = line.encode() if isinstance(line, str) else line
    if not raw.startswith(b"data:"):
        return None
    payload = raw[5:].strip()
    if payload == b"[DONE]" or not payload:
        return None
    try:
        chunk = _decoder.decode(payload)
    except msgspec.DecodeError:
        return StreamEvent(error="the upstream sent a malformed chunk")
    return _event(chunk)


def _event(chunk: _Chunk) -> StreamEvent:
    if chunk.error is not None:
        error = chunk.error
        if isinstance(error, dict):
            return StreamEvent(error=str(error.get("message") or error), error_status=_status(error.get("code")))
        return StreamEvent(error=str(error))
    if chunk.object == "error":
        return StreamEvent(error=chunk.message or "error", error_status=_status(chunk.code))
    choice = chunk.choices[0] if chunk.choices else _Choice()
    delta = choice.delta or _Delta()
    usage = chunk.usage or _Usage()
    return StreamEvent(
        text=delta.content or "",
        finish_reason=choice.finish_reason,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        tool_calls=tuple(delta.tool_calls or ()),
    )


def _status(code: Any) -> int | None:
    """vLLM puts the HTTP status in `code`; OpenAI a word ("context_length_exceeded"), which is no status."""
    return code if isinstance(code, int) and 400 <= code < 600 else None


class SseDecoder:
    """Bytes as the network delivers them in, the events of the whole lines among them out; a line cut
    across two reads waits for its end."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> list[StreamEvent]:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        events = []
        for line in lines:
            event = parse_sse_line(line.rstrip(b"\r"))
            if event is not None:
                events.append(event)
        return events
