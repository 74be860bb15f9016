"""Session quotas and detached sessions, without a server: who is unloaded, and which turns yield."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.image_ledger import ImageLedger
from gateway.core.ratelimit import BucketsByAddress, TokenBucket
from gateway.core.session import Session, UserTurn
from gateway.core.turn_types import StartedTurn
from gateway.edge.quota import SessionQuota
from gateway.engine.contract import TurnHandle
from gateway.ws.detached import DetachedSessions
from gateway.ws.journal import Journal
from gateway.ws.live_session import LiveSession


@dataclass(eq=False)
class Fake:
    id: str
    client: str = "a"
    owner: str = ""
    detached_at: float | None = None
    handle: TurnHandle | None = None
    yielding: bool = False

    @property
    def running(self) -> TurnHandle | None:
        return self.handle


def test_past_the_cap_the_oldest_detached_sessions_go_first() -> None:
    """Three of one client's sessions at a cap of three: the next one unloads the oldest detached, never an attached one."""
    quota: SessionQuota[Fake] = SessionQuota(per_client=3, per_key=100)
    attached, old, young = Fake("x"), Fake("y", detached_at=1.0), Fake("z", detached_at=2.0)
    for held in (attached, old, young):
        quota.add(held)
    assert [h.id for h in quota.over("a", "")] == ["y"]
    assert list(quota.over("b", "")) == []  # another address has its own quota


def test_an_all_attached_client_is_not_unloaded() -> None:
    """With none detached there is nothing to unload: the connection caps bound attached sessions."""
    quota: SessionQuota[Fake] = SessionQuota(per_client=1, per_key=100)
    quota.add(Fake("x"))
    assert list(quota.over("a", "")) == []


def test_the_key_quota_counts_across_addresses() -> None:
    """Sessions opened with one key from many addresses count together against `per_key`."""
    quota: SessionQuota[Fake] = SessionQuota(per_client=100, per_key=2)
    quota.add(Fake("x", client="a", owner="k", detached_at=5.0))
    quota.add(Fake("y", client="b", owner="k", detached_at=3.0))
    assert [h.id for h in quota.over("c", "k")] == ["y"]
    assert list(quota.over("c", "")) == []  # without keys there is no key quota


def test_moving_a_session_moves_its_count() -> None:
    """A session resumed from another address counts there from then on."""
    quota: SessionQuota[Fake] = SessionQuota(per_client=5, per_key=5)
    held = Fake("x")
    quota.add(held)
    quota.move(held, "b")
    assert (quota.count("a"), quota.count("b"), held.client) == (0, 1, "b")
    quota.remove(held)
    assert quota.count("b") == 0


def test_make_room_stops_the_oldest_running_detached_turns_once() -> None:
    """Two waiting turns stop the two oldest running detached turns; a stopping turn is never stopped again."""
    detached: DetachedSessions[Fake] = DetachedSessions()
    sessions = [Fake(str(n), handle=TurnHandle()) for n in range(3)]
    idle = Fake("idle")
    detached.add(idle)
    for session in sessions:
        detached.add(session)
    assert detached.make_room(2) == 2
    assert [s.handle is not None and s.handle.cancelled.is_set() for s in sessions] == [True, True, False]
    assert detached.make_room(2) == 1 and sessions[2].yielding  # the two stopping ones are passed over
    sessions[0].handle = None  # its turn ended: the session has no running turn any more
    detached.turn_ended(sessions[0])
    assert not sessions[0].yielding and [s.yielding for s in sessions[1:]] == [True, True]
    assert detached.make_room(1) == 0  # nothing left running that is not already stopping


def test_take_bytes_refuses_without_spending() -> None:
    """A byte bucket refuses an amount it does not hold and says when it will; a refusal costs nothing."""
    bucket = TokenBucket(rate=100.0, burst=1000.0, updated=0.0)
    assert bucket.take_bytes(800, now=0.0) == 0.0
    assert bucket.take_bytes(800, now=0.0) == 6.0  # 200 held, 600 more at 100 a second
    assert bucket.take_bytes(800, now=6.0) == 0.0
    assert bucket.take_bytes(5000, now=16.0) == 0.0  # above the burst: allowed from a full bucket, into debt
    assert bucket.tokens == -4000.0


def test_the_ledger_tells_caches_what_sessions_leave() -> None:
    """Every change in what sessions hold is passed on as the room left for caches."""
    told: list[int] = []
    ledger = ImageLedger(1000, told.append)
    ledger.hold("a", 300)
    ledger.hold("b", 200)
    ledger.release("a")
    assert told == [700, 500, 800]


async def test_a_turn_that_ended_is_not_stopped_again() -> None:
    """A session whose turn has ended (its `done` still waiting for the store) offers nothing to stop, so
    the count of stopping turns cannot drift."""
    live = LiveSession(Session(max_history_turns=8), "token", "", Journal(1 << 20, 16))
    started = StartedTurn(turn=UserTurn(id="t", text="x"), plan=None, handle=TurnHandle(), epoch=0, model=None)  # type: ignore[arg-type]
    live.active = started
    assert live.running is started.handle
    live.ended = started
    assert live.running is None
    detached: DetachedSessions[LiveSession] = DetachedSessions()
    detached.add(live)
    assert detached.make_room(1) == 0 and not live.yielding


def test_buckets_by_address_share_one_bucket_and_forget_idle_ones_first() -> None:
    """An address's connections share its bucket; past the cap, full (idle) buckets are forgotten first."""
    buckets = BucketsByAddress(rate=1.0, burst=10.0, max_addresses=2)
    busy = buckets.get("a")
    assert buckets.get("a") is busy
    busy.spend(10.0)  # "a" is in debt, "b" is full
    buckets.get("b")
    buckets.get("c")
    assert buckets.get("a") is busy  # the idle "b" went, not the spent "a"
