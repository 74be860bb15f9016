"""A connection's frame handlers driven with no socket: client frames in, the session's frames out, on the
scripted engine (the handlers are the connection's side of its session; the socket is ws/connection.py's)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.config import Settings
from gateway.core.store.memory import MemoryStore
from gateway.core.turns import TurnService
from gateway.engine.scripted import ScriptedEngine
from gateway.errors import ErrorCode, GatewayError
from gateway.metrics import Metrics
from gateway.ws import protocol as p
from gateway.ws.handlers import HANDLERS, FrameHandlers
from gateway.ws.hub import SessionHub
from gateway.ws.live_session import LiveSession


class Bare(FrameHandlers):
    """The handlers with no socket: attached to its session, streaming nothing; tests read the journal."""

    def taken_over(self) -> None:
        pass

    def switch_to(self, live: LiveSession) -> None:
        old, self.live = self.live, live
        self.hub.attach(live, self, self.client)
        self.hub.detach(old, self)

    async def frames(self, count: int) -> list[p.SessionFrame]:
        journal = self.live.journal
        taken: list[p.SessionFrame] = []
        while len(taken) < count:
            frame = await asyncio.wait_for(journal.take(), 60)
            assert frame is not None
            taken.append(frame)
        return taken


@pytest.fixture
async def handlers() -> AsyncIterator[Bare]:
    settings = Settings(turns_per_minute=1e6)
    turns = TurnService(settings, ScriptedEngine(), Metrics())
    hub = SessionHub(settings, turns, MemoryStore())
    bare = Bare(settings, hub, "127.0.0.1", "", None)
    hub.attach(bare.live, bare, bare.client)
    try:
        yield bare
    finally:
        await turns.settle()
        await hub.close()
        turns.close()


async def frames_for(handlers: Bare, frame: dict[str, Any], count: int) -> list[p.SessionFrame]:
    await handlers.handle(p.decode(json.dumps(frame)))
    return await handlers.frames(count)


def test_every_client_frame_has_a_handler() -> None:
    """The dispatch table covers every client frame type, and nothing else."""
    assert set(HANDLERS) == set(p.ClientFrame.__args__)  # type: ignore[attr-defined]


async def test_a_ping_is_answered_with_a_pong(handlers: Bare) -> None:
    """`ping` -> `pong` with its id, into the session's journal."""
    (pong,) = await frames_for(handlers, {"type": "ping", "id": "p1"}, 1)
    assert isinstance(pong, p.PongFrame) and pong.id == "p1"


async def test_a_turn_streams_accepted_tokens_and_done(handlers: Bare) -> None:
    """`turn` on the scripted engine: `accepted`, one `token` per word, then `done`; the exchange is recorded."""
    frames = await frames_for(handlers, {"type": "turn", "id": "t1", "text": "hi", "options": {"max_tokens": 3}}, 2)
    while not isinstance(frames[-1], p.DoneFrame):
        frames += await handlers.frames(1)
    assert isinstance(frames[0], p.AcceptedFrame) and frames[0].id == "t1"
    text = "".join(f.text for f in frames if isinstance(f, p.TokenFrame))
    done = frames[-1]
    assert isinstance(done, p.DoneFrame) and done.text == text and done.usage.completion_tokens == 3
    assert len(handlers.session.exchanges) == 1 and handlers.active is None


async def test_configure_answers_with_the_session_defaults(handlers: Bare) -> None:
    """`configure` changes the session's defaults and answers `configured` with them."""
    (configured,) = await frames_for(handlers, {"type": "configure", "id": "c", "temperature": 0.2, "min_p": 0.1}, 1)
    assert isinstance(configured, p.ConfiguredFrame)
    assert configured.defaults["temperature"] == 0.2 and configured.defaults["min_p"] == 0.1


async def test_cancelling_an_unknown_turn_is_not_found(handlers: Bare) -> None:
    """`cancel` for a turn that is not running raises `not_found` (the connection turns it into an `error`)."""
    with pytest.raises(GatewayError) as refused:
        await handlers.handle(p.CancelFrame(id="nothing"))
    assert refused.value.code is ErrorCode.NOT_FOUND


async def test_a_second_turn_while_one_runs_is_busy(handlers: Bare) -> None:
    """Only one turn per session at a time: a second is `busy`, and the first goes on to its `done`."""
    await handlers.handle(p.TurnFrame(id="a", text="hi", options=p.SamplingOptions(max_tokens=50)))
    with pytest.raises(GatewayError) as refused:
        await handlers.handle(p.TurnFrame(id="b", text="hi"))
    assert refused.value.code is ErrorCode.BUSY


async def test_reset_empties_the_history(handlers: Bare) -> None:
    """`reset` after a turn: the history is empty and `reset` is answered."""
    await handlers.handle(p.TurnFrame(id="t", text="hi", options=p.SamplingOptions(max_tokens=2)))
    frames: list[p.SessionFrame] = []
    while not any(isinstance(f, p.DoneFrame) for f in frames):
        frames += await handlers.frames(1)
    (reset,) = await frames_for(handlers, {"type": "reset", "id": "r"}, 1)
    assert isinstance(reset, p.ResetDoneFrame) and handlers.session.exchanges == []
