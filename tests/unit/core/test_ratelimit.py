"""Token buckets: bursts, steady refill, and the wait they report."""

from __future__ import annotations

from gateway.core.ratelimit import TokenBucket


def test_burst_then_refusal_with_wait() -> None:
    """A full bucket allows `burst` takes at once, then reports how long until the next token."""
    bucket = TokenBucket(rate=2.0, burst=3.0, updated=100.0)
    assert [bucket.take(now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(now=100.0) == 0.5


def test_refills_at_rate_up_to_burst() -> None:
    """Tokens come back at `rate` per second and never exceed `burst`."""
    bucket = TokenBucket(rate=1.0, burst=2.0, updated=0.0)
    bucket.take(now=0.0)
    bucket.take(now=0.0)
    assert bucket.take(now=0.5) > 0
    assert bucket.take(now=1.6) == 0.0
    assert bucket.take(now=100.0) == 0.0 and bucket.take(now=100.0) == 0.0 and bucket.take(now=100.0) > 0
