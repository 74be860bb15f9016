"""What the running server shares, typed: settings, metrics, the engine and its turn service once loaded, one drain flag."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from gateway.config import Settings
from gateway.core.turn_types import Drain
from gateway.core.turns import TurnService
from gateway.engine.contract import Engine
from gateway.metrics import Metrics


@dataclass
class Runtime:
    """The application's state, one object for both front ends (the WebSocket's own is `ws.state.WsState`)."""

    settings: Settings
    metrics: Metrics
    engine: Engine | None = None  # None while the model loads, or when it failed to
    turns: TurnService | None = None  # the turn service, once the engine is ready
    load_error: str | None = None
    drain: Drain = field(default_factory=Drain)  # the one drain flag: no new connections, no new turns

    @property
    def draining(self) -> bool:
        return self.drain.on

    def serve(self, engine: Engine) -> TurnService:
        """From here on both front ends reach the engine through one turn service, which shares the drain flag."""
        self.turns = TurnService(self.settings, engine, self.metrics, self.drain)
        self.engine = engine
        return self.turns


def runtime_of(app: Any) -> Runtime:
    """The runtime on a Starlette app (`app.state.runtime`); the core knows no Starlette, hence `Any`."""
    return cast(Runtime, app.state.runtime)
