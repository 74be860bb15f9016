"""The session hub with no server: sessions created, resumed by token, kept through the grace period,
taken over, forgotten, and a turn on the scripted engine recorded before its `done`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.core.request import SamplingOptions, TurnRequest
from gateway.core.session import UserTurn
from gateway.core.store.base import SessionStore
from gateway.core.store.memory import MemoryStore
from gateway.core.store.sqlite import SqliteStore
from gateway.core.turns import TurnService
from gateway.engine.scripted import ScriptedEngine
from gateway.errors import ErrorCode, GatewayError
from gateway.metrics import Metrics
from gateway.ws import protocol as p
from gateway.ws.hub import SessionHub
from gateway.ws.live_session import LiveSession
from gateway.ws.turn_frames import TurnFrames


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


async def run_turn(hub: SessionHub, live: LiveSession, turn_id: str, max_tokens: int) -> list[p.SessionFrame]:
    """One turn through the turn service on the scripted engine, as a connection starts it; its frames up to `done`."""
    frames = TurnFrames(hub.emit, live, turn_id)
    request = TurnRequest(turn_id, "hello", options=SamplingOptions(max_tokens=max_tokens))
    started = await hub.turns.start(live.session, request, frames, hub.turns.grammars.quota("10.0.0.1"), hub.keeper(live))
    frames.started = live.active = started
    seen: list[p.SessionFrame] = []
    while not seen or not isinstance(seen[-1], p.DoneFrame):
        frame = await live.journal.take()
        assert frame is not None
        seen.append(frame)
    return seen


async def test_a_turn_streams_accepted_tokens_then_done(hub: SessionHub) -> None:
    """A session's turn comes out as `accepted`, one `token` per delta, then `done`, numbered in order."""
    live = hub.create(owner="", client="10.0.0.1")
    frames = await run_turn(hub, live, "t1", max_tokens=3)
    kinds = [type(f).__name__ for f in frames]
    assert kinds[0] == "AcceptedFrame" and kinds[-1] == "DoneFrame" and set(kinds[1:-1]) <= {"TokenFrame"}
    assert [f.seq for f in frames] == list(range(1, len(frames) + 1))


async def test_a_finished_turn_joins_the_history_before_its_done(hub: SessionHub) -> None:
    """When `done` is read, the exchange is in the history and the session has no running turn."""
    live = hub.create(owner="", client="10.0.0.1")
    done = (await run_turn(hub, live, "t1", max_tokens=3))[-1]
    assert isinstance(done, p.DoneFrame) and done.text == " w0 w1 w2"
    assert [e.reply for e in live.session.exchanges] == [" w0 w1 w2"] and live.active is None
