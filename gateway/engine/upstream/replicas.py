"""Pure: the upstream replicas, their health, and which one a session's turn goes to."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


class ReplicaState(enum.Enum):
    UP = "up"
    DOWN = "down"  # unreachable, or answered 5xx; the health check brings it back


@dataclass
class Replica:
    url: str  # base URL, without /v1
    state: ReplicaState = ReplicaState.UP
    overloaded_until: float = 0.0  # monotonic time before which it said 429/503
    active: int = 0  # turns streaming from it now
    lacking: set[str] = field(default_factory=set)  # run-time adapters it lost (a restart) and has not loaded again

    def available(self, now: float) -> bool:
        return self.state is ReplicaState.UP and now >= self.overloaded_until


def rendezvous_score(key: str, url: str) -> int:
    """Highest random weight hashing: each (key, replica) pair gets a stable pseudo-random score, and a
    key goes to its highest-scoring live replica. A replica's death moves only its own keys."""
    digest = hashlib.blake2b(f"{key}\x00{url}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class NoReplica(Exception):
    """No replica can take a turn now; `retry_after_s` says when one is likely to."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ReplicaSet:
    def __init__(self, urls: Sequence[str], down_retry_s: float = 2.0) -> None:
        if not urls:
            raise ValueError("at least one upstream URL")
        self.replicas = [Replica(url.rstrip("/")) for url in urls]
        self.down_retry_s = down_retry_s

    def pick(self, key: str | None, now: float, exclude: Iterable[Replica] = ()) -> Replica:
        """The session's replica by rendezvous hashing over the available ones; with no key, the least busy.
        When every replica not excluded is down, the down ones are tried all the same: one failed connect
        or a 5xx under load marks a replica down until the next health check, and refusing every turn
        meanwhile would turn a blip into an outage (more so with a single replica). Overloaded replicas
        are left alone until their Retry-After."""
        skipped = set(map(id, exclude))
        candidates = [r for r in self.replicas if r.available(now) and id(r) not in skipped]
        if not candidates:
            candidates = [r for r in self.replicas if now >= r.overloaded_until and id(r) not in skipped]
        if not candidates:
            raise NoReplica(*self._why_none(now))
        if key is None:
            return min(candidates, key=lambda r: r.active)
        return max(candidates, key=lambda r: rendezvous_score(key, r.url))

    def _why_none(self, now: float) -> tuple[str, float]:
        waits = [r.overloaded_until - now for r in self.replicas if r.state is ReplicaState.UP and r.overloaded_until > now]
        if waits:
            return "every upstream replica is overloaded", max(0.1, min(waits))
        return "no upstream replica is reachable", self.down_retry_s

    def mark_down(self, replica: Replica) -> None:
        replica.state = ReplicaState.DOWN

    def mark_up(self, replica: Replica) -> None:
        replica.state = ReplicaState.UP

    def mark_overloaded(self, replica: Replica, now: float, retry_after_s: float) -> None:
        replica.overloaded_until = max(replica.overloaded_until, now + retry_after_s)

    def lacking(self, adapter: str | None) -> list[Replica]:
        """The replicas that cannot serve a turn on `adapter` until it is loaded on them again."""
        return [r for r in self.replicas if adapter in r.lacking] if adapter is not None else []

    @property
    def up(self) -> list[Replica]:
        return [r for r in self.replicas if r.state is ReplicaState.UP]

    @property
    def active(self) -> int:
        return sum(r.active for r in self.replicas)
