"""Who holds which sessions in memory: per client address and per API key, so one client's abandoned
sessions are bounded by its own quota, and the detached ones go first."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any, Generic, Protocol, TypeVar


class Held(Protocol):
    """A session as the quota sees it: whose it is, and whether a connection streams it."""

    @property
    def id(self) -> str: ...

    client: str  # the address of the connection that created or last attached it
    owner: str  # a hash of the API key that opened it ("" without keys)
    detached_at: float | None  # when its connection went; None while attached


H = TypeVar("H", bound=Held)


class SessionQuota(Generic[H]):
    """Sessions in memory per client address and per key. Invariant: a key's or an address's count
    passes its cap only while every session it holds is attached (the connection caps bound those)."""

    def __init__(self, per_client: int, per_key: int) -> None:
        self.per_client = per_client
        self.per_key = per_key
        self._by_client: dict[str, dict[str, H]] = collections.defaultdict(dict)
        self._by_key: dict[str, dict[str, H]] = collections.defaultdict(dict)

    def add(self, held: H) -> None:
        self._by_client[held.client][held.id] = held
        if held.owner:
            self._by_key[held.owner][held.id] = held

    def remove(self, held: H) -> None:
        _discard(self._by_client, held.client, held.id)
        if held.owner:
            _discard(self._by_key, held.owner, held.id)

    def move(self, held: H, client: str) -> None:
        """`held` is attached from another address now: it counts there."""
        self.remove(held)
        held.client = client
        self.add(held)

    def count(self, client: str) -> int:
        return len(self._by_client.get(client, {}))

    def over(self, client: str, owner: str, adding: int = 1) -> Iterator[H]:
        """The detached sessions to unload, oldest first, so that `adding` more sessions of `client` and
        `owner` fit both caps (fewer when not enough of them are detached)."""
        chosen: dict[str, H] = {}
        for table, key, cap in ((self._by_client, client, self.per_client), (self._by_key, owner, self.per_key)):
            if not key and table is self._by_key:
                continue
            held = table.get(key, {})
            excess = len(held) + adding - cap - sum(1 for h in chosen.values() if h.id in held)
            if excess > 0:
                detached = sorted((h for h in held.values() if h.detached_at is not None and h.id not in chosen), key=_age)
                chosen.update((h.id, h) for h in detached[:excess])
        return iter(chosen.values())


def _age(held: Held) -> float:
    return held.detached_at if held.detached_at is not None else 0.0


def _discard(table: dict[str, dict[str, Any]], key: str, session_id: str) -> None:
    held = table.get(key)
    if held is not None:
        held.pop(session_id, None)
        if not held:
            del table[key]
