"""Token buckets: how many frames or turns a connection may send, refilled at a steady rate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """`rate` tokens per second up to `burst`; `take` spends one or says how long until one is due."""

    rate: float
    burst: float
    tokens: float = -1.0
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float | None = None) -> float:
        """0.0 when allowed (a token is spent), else the seconds to wait before trying again."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else float("inf")

    def take_bytes(self, amount: float, now: float | None = None) -> float:
        """Spend `amount` if the bucket holds it (0.0), else spend nothing and say how long until it will.
        An amount above `burst` is allowed from a full bucket, into debt."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        needed = min(amount, self.burst)
        if self.tokens >= needed:
            self.tokens -= amount
            return 0.0
        needed -= self.tokens
        return needed / self.rate if self.rate > 0 else float("inf")

    def spend(self, amount: float, now: float | None = None) -> float:
        """Spend `amount` even into debt (the work is already done); the seconds until the debt is paid."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate) - amount
        self.updated = now
        return -self.tokens / self.rate if self.tokens < 0 and self.rate > 0 else 0.0


class BucketsByAddress:
    """One bucket per client address, shared by its connections, so reconnecting buys no fresh burst. Past
    `max_addresses`, the buckets that have refilled to full (idle clients: forgetting them loses nothing)
    go first, else the oldest half."""

    def __init__(self, rate: float, burst: float, max_addresses: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self.max_addresses = max_addresses
        self._buckets: dict[str, TokenBucket] = {}

    def get(self, address: str) -> TokenBucket:
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self.max_addresses:
                self._forget_idle()
            bucket = self._buckets[address] = TokenBucket(rate=self.rate, burst=self.burst)
        return bucket

    def _forget_idle(self) -> None:
        now = time.monotonic()
        idle = [a for a, b in self._buckets.items() if b.tokens + (now - b.updated) * b.rate >= b.burst]
        for address in idle or list(self._buckets)[: self.max_addresses // 2]:
            del self._buckets[address]
