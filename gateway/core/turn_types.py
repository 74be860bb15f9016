"""The turn service's own types: a started turn, the keeper told of its end, and the drain flag."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from gateway.core.session import PromptPlan, UserTurn
from gateway.core.tracing import NO_TRACE, TurnTrace
from gateway.engine.contract import GenerationResult, TurnHandle


@dataclass
class StartedTurn:
    """A session's turn on the engine: what to record when it ends, and the grip to cancel it."""

    turn: UserTurn
    plan: PromptPlan
    handle: TurnHandle
    epoch: int
    model: str | None  # the adapter it runs on; None is the base model
    trace: TurnTrace = NO_TRACE  # ended by the turn service once the turn's `Ended` is delivered


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
