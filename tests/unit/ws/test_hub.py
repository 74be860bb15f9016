"""The session hub with no server: sessions created, resumed by token, kept through the grace period,
taken over, forgotten, and a turn's end recorded before its `done`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.core.session import PromptPlan, UserTurn
from gateway.core.store.base import SessionStore
from gateway.core.store.memory import MemoryStore
from gateway.core.store.sqlite import SqliteStore
from gateway.core.turns import StartedTurn, TurnService
from gateway.engine.contract import GenerationResult, TurnHandle
from gateway.engine.scripted import ScriptedEngine
from gateway.errors import ErrorCode, GatewayError
from gateway.metrics import Metrics
from gateway.ws import protocol as p
from gateway.ws.hub import SessionHub
from gateway.ws.live_session import LiveSession


class Socket:
    """A connection as the hub sees it: told when another takes its session over."""

    def __init__(self) -> None:
        self.taken = False

    def taken_over(self) -> None:
        self.taken = True


async def open_hub(store: SessionStore, **settings: object) -> AsyncIterator[SessionHub]:
    config = Settings(**settings)  # type: ignore[arg-type]
    turns = TurnService(config, ScriptedEngine(), Metrics())
    hub = SessionHub(config, turns, store)
    await store.open()
    try:
        yield hub
    finally:
        await hub.close()
        turns.close()


@pytest.fixture
async def hub() -> AsyncIterator[SessionHub]:
    async for opened in open_hub(MemoryStore(), session_grace_s=60.0):
        yield opened


async def refusal(hub: SessionHub, session_id: str, token: str, owner: str = "") -> ErrorCode:
    with pytest.raises(GatewayError) as info:
        await hub.resume(session_id, token, owner)
    return info.value.code


async def test_a_live_session_resumes_with_its_token(hub: SessionHub) -> None:
    """The right id and token give back the same live session."""
    live = hub.create(owner="", client="10.0.0.1")
    assert await hub.resume(live.id, live.token, "") is live


async def test_every_wrong_resume_is_the_same_refusal(hub: SessionHub) -> None:
    """A wrong token, another key's owner and an unknown id all answer `resume_failed`, telling nothing apart."""
    live = hub.create(owner="key-a", client="10.0.0.1")
    codes = {
        await refusal(hub, live.id, "wrong", "key-a"),
        await refusal(hub, live.id, live.token, "key-b"),
        await refusal(hub, "no-such-session", live.token, "key-a"),
    }
    assert codes == {ErrorCode.RESUME_FAILED}


async def test_a_second_connection_takes_the_session_over(hub: SessionHub) -> None:
    """Attaching another connection tells the first it was taken over; its late detach changes nothing."""
    live = hub.create(owner="", client="10.0.0.1")
    first, second = Socket(), Socket()
    hub.attach(live, first, "10.0.0.1")
    hub.attach(live, second, "10.0.0.1")
    hub.detach(live, first)
    assert first.taken and not second.taken and live.attached is second


async def test_a_detached_session_stays_through_the_grace_period(hub: SessionHub) -> None:
    """After its socket goes, a session is still live and resumable."""
    live = hub.create(owner="", client="10.0.0.1")
    socket = Socket()
    hub.attach(live, socket, "10.0.0.1")
    hub.detach(live, socket)
    assert hub.live[live.id] is live and await hub.resume(live.id, live.token, "") is live


async def test_without_a_grace_period_a_detached_session_leaves_memory() -> None:
    """session_grace_s 0: the session is unloaded when its socket goes; the memory store cannot bring it back."""
    async for hub in open_hub(MemoryStore(), session_grace_s=0.0):
        live = hub.create(owner="", client="10.0.0.1")
        socket = Socket()
        hub.attach(live, socket, "10.0.0.1")
        hub.detach(live, socket)
        assert live.id not in hub.live
        assert await refusal(hub, live.id, live.token) is ErrorCode.RESUME_FAILED


async def test_an_unloaded_session_resumes_from_a_durable_store(tmp_path: Path) -> None:
    """With SQLite, a session out of memory is read back with its history; its frames number on past a gap."""
    async for hub in open_hub(SqliteStore(tmp_path / "s.db", Settings()), session_grace_s=0.0):
        live = hub.create(owner="", client="10.0.0.1")
        live.session.record(UserTurn("t1", "hello"), "hi there", False, live.session.epoch)
        await hub.save_history(live)
        socket = Socket()
        hub.attach(live, socket, "10.0.0.1")
        hub.detach(live, socket)
        revived = await hub.resume(live.id, live.token, "", "10.0.0.1")
        assert revived is not live and [e.reply for e in revived.session.exchanges] == ["hi there"]
        assert revived.journal.next_seq > live.journal.next_seq


async def test_a_forgotten_session_cannot_be_resumed(hub: SessionHub) -> None:
    """`forget` takes it out of memory and the store: a later resume is refused."""
    live = hub.create(owner="", client="10.0.0.1")
    await hub.forget(live)
    assert live.id not in hub.live and await refusal(hub, live.id, live.token) is ErrorCode.RESUME_FAILED


async def test_emitted_frames_are_numbered_in_the_sessions_journal(hub: SessionHub) -> None:
    """What the hub emits for a session is what its writer reads, in order, numbered."""
    live = hub.create(owner="", client="10.0.0.1")
    hub.emit(live, p.AcceptedFrame(id="t1", prompt_tokens=3))
    hub.emit(live, p.TokenFrame(id="t1", text="hi"))
    frames = [await live.journal.take(), await live.journal.take()]
    assert [(type(f).__name__, f.seq) for f in frames if f is not None] == [("AcceptedFrame", 1), ("TokenFrame", 2)]


def started_turn(live: LiveSession, turn_id: str) -> StartedTurn:
    started = StartedTurn(UserTurn(turn_id, "q"), PromptPlan([], 3, 0), TurnHandle(), live.session.epoch, None)
    live.active = started
    return started


def result(finish_reason: str, **fields: object) -> GenerationResult:
    return GenerationResult(finish_reason, "a reply", (1, 2), 3, 1.0, 2.0, 10.0, **fields)  # type: ignore[arg-type]


async def next_frames(live: LiveSession, count: int) -> list[p.SessionFrame]:
    frames = [await live.journal.take() for _ in range(count)]
    return [f for f in frames if f is not None]


async def test_a_finished_turn_joins_the_history_before_its_done(hub: SessionHub) -> None:
    """turn_done records the exchange, then emits `done`; the session has no active turn after."""
    live = hub.create(owner="", client="10.0.0.1")
    hub.turn_done(live, started_turn(live, "t1"), result("stop"))
    (done,) = await next_frames(live, 1)
    assert isinstance(done, p.DoneFrame) and done.id == "t1" and done.usage.total_tokens == 5
    assert [e.reply for e in live.session.exchanges] == ["a reply"] and live.active is None


async def test_a_failed_turn_sends_its_error_then_done_and_joins_no_history(hub: SessionHub) -> None:
    """A failed turn: an `error` frame with its stable code, then `done`; the history is unchanged."""
    live = hub.create(owner="", client="10.0.0.1")
    hub.turn_done(
        live, started_turn(live, "t1"), result("error", error="boom", error_code=ErrorCode.OVERLOADED, retry_after_ms=50)
    )
    error, done = await next_frames(live, 2)
    assert isinstance(error, p.ErrorFrame) and (error.code, error.id, error.retry_after_ms) == ("overloaded", "t1", 50)
    assert isinstance(done, p.DoneFrame) and done.finish_reason == "error" and live.session.exchanges == []
