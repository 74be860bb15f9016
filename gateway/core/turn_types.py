"""The turn service's own types: a started turn, the keeper told of its end, and the drain flag."""

from __future__ import annotations

import math
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from gateway.core.session import PromptPlan, UserTurn
from gateway.core.tracing import NO_TRACE, TurnTrace
from gateway.engine.contract import Engine, GenerationResult, TurnHandle


@dataclass
class StartedTurn:
    """A session's turn on the engine: what to record when it ends, and the grip to cancel it."""

    turn: UserTurn
    plan: PromptPlan
    handle: TurnHandle
    epoch: int
    model: str | None  # the adapter it runs on; None is the base model
    trace: TurnTrace = NO_TRACE  # ended by the turn service once the turn's `Ended` is delivered
    item_id: str | None = None  # the ids its user message and reply will have (named now, for `accepted`)
    reply_id: str | None = None
    answers: str | None = None  # a regenerated reply's: the item it answers, where it joins as a new sibling
    edits: str | None = None  # an edit's: the user message its own joins beside, answered by its reply
    max_tokens: int | None = None  # what it asked for: a trim ahead's guess at the next turn's (None: the session's)


class SessionKeeper(Protocol):
    """Whoever holds a session in memory (the WebSocket front end's hub), told of its turn's end."""

    def turn_ended(self, started: StartedTurn, result: GenerationResult) -> bool:
        """The engine has finished the turn; whether the session is still in memory (its images still count)."""
        ...

    def persist(self, started: StartedTurn) -> Awaitable[None]:
        """Make the recorded exchange durable (a store write, in order behind the session's others)."""
        ...


class Drain:
    """The server's one drain flag: once on, both front ends refuse new turns (and the WebSocket new connections)."""

    def __init__(self) -> None:
        self.on = False


class TurnPace:
    """How long turns take lately (a moving average of clean ends), and so when a slot is likely free."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.turn_ms = 1000.0

    def observe(self, result: GenerationResult) -> None:
        if result.finish_reason in ("stop", "length"):
            self.turn_ms += 0.2 * (result.total_ms - self.turn_ms)

    def retry_after_ms(self) -> int:
        """The turns ahead, in rounds of the engine's capacity, times the recent turn duration; at least 100 ms,
        at most a minute."""
        load = self.engine.load()
        rounds = math.ceil((load.waiting + 1) / max(1, load.capacity))
        return int(min(60_000, max(100, rounds * self.turn_ms)))
