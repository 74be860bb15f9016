"""A turn's events as the turn service hands them to a front end: a small sum type that each front end renders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

from gateway.core.live_view import LiveFrames
from gateway.engine.contract import GenerationResult, ToolCall


@dataclass(frozen=True)
class Accepted:
    """The turn is planned and on the engine: its prompt's length and the old exchanges trimmed to fit."""

    prompt_tokens: int
    dropped_turns: int
    live_frames: LiveFrames | None = None  # the live window's frames the prompt reads
    item_id: str | None = None  # the user message's item (None: a turn that goes on from tool results, or no session)
    reply_id: str | None = None  # the item the reply will be once it joins


@dataclass(frozen=True)
class Queued:
    """It waits for a slot: `position` turns ahead of it, itself included."""

    position: int


@dataclass(frozen=True)
class Delta:
    """Reply text, outside any tool call."""

    text: str


@dataclass(frozen=True)
class ToolCalled:
    """Whole tool calls, parsed from the reply, before it ends."""

    calls: tuple[ToolCall, ...]


@dataclass(frozen=True)
class Ended:
    """The turn's end, exactly once and last: finish reason, usage, timing (and the error, if it failed)."""

    result: GenerationResult
    reply_id: str | None = None  # the reply's item, where it joined a session's history


TurnEvent = Union[Accepted, Queued, Delta, ToolCalled, Ended]
Listener = Callable[[TurnEvent], None]  # called on the event loop thread, in order
